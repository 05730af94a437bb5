package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"testing"
)

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

func TestPprofOnlyWhenAskedFor(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, pprof := range []bool{false, true} {
		m, err := startMetrics(MetricsConfig{Listen: "127.0.0.1:0", Pprof: pprof}, "nudged-test", quiet)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		served := make(chan error, 1)
		go func() { served <- m.serve(ctx) }()
		base := "http://" + m.lis.Addr().String()
		code, body := get(t, base+"/metrics")
		if code != http.StatusOK || !strings.Contains(body, `service_name="nudged-test"`) || !strings.Contains(body, "process_resident_memory_bytes") {
			t.Errorf("pprof=%v: /metrics %d lacks the service name or the process collector:\n%s", pprof, code, body)
		}
		code, body = get(t, base+"/debug/pprof/")
		switch {
		case pprof && (code != http.StatusOK || !strings.Contains(body, "goroutine")):
			t.Errorf("pprof on: /debug/pprof/ %d %q", code, body)
		case !pprof && code != http.StatusNotFound:
			t.Errorf("pprof off: /debug/pprof/ answered %d, want 404", code)
		}
		cancel()
		if err := <-served; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
}
