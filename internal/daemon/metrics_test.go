package daemon

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"os"
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

// TestPprofCmdlineIsRedacted: the command line pprof shows carries no
// secret, in any flag form.
func TestPprofCmdlineIsRedacted(t *testing.T) {
	args := []string{"nudged", "--redis-password", "hunter2-a", "-redis-password=hunter2-b",
		"--redis-addr", "redis://nudge:hunter2-c@10.0.0.9:6379/0", "--redis-cluster=rediss+cluster://u:hunter2-d@h1:7000,h2:7000",
		"--listen", "127.0.0.1:7070", "--redis-password"}
	got := strings.Join(RedactArgs(args), " ")
	if strings.Contains(got, "hunter2") {
		t.Errorf("RedactArgs left a secret: %s", got)
	}
	for _, kept := range []string{"--listen 127.0.0.1:7070", "redis://nudge:REDACTED@10.0.0.9:6379/0", "-redis-password=REDACTED", "--redis-password REDACTED"} {
		if !strings.Contains(got, kept) {
			t.Errorf("RedactArgs = %s, want %q in it", got, kept)
		}
	}

	saved := os.Args
	os.Args = args
	t.Cleanup(func() { os.Args = saved })
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	m, err := startMetrics(MetricsConfig{Listen: "127.0.0.1:0", Pprof: true}, "nudged-test", quiet)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	served := make(chan error, 1)
	go func() { served <- m.serve(ctx) }()
	defer func() {
		cancel()
		<-served
	}()
	code, body := get(t, "http://"+m.lis.Addr().String()+"/debug/pprof/cmdline")
	if code != http.StatusOK || strings.Contains(body, "hunter2") || !strings.Contains(body, "REDACTED") {
		t.Errorf("/debug/pprof/cmdline %d: %q", code, body)
	}
}
