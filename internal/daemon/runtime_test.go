package daemon

import (
	"bytes"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// TestApplyRuntime sets the collector's target and the memory limit from
// the config, unless GOGC or GOMEMLIMIT is set. It changes process-wide
// settings, so it restores them and does not run in parallel.
func TestApplyRuntime(t *testing.T) {
	pct := debug.SetGCPercent(100)
	limit := debug.SetMemoryLimit(-1)
	t.Cleanup(func() {
		debug.SetGCPercent(pct)
		debug.SetMemoryLimit(limit)
	})
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	env := func(vars map[string]string) func(string) (string, bool) {
		return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
	}
	for _, tc := range []struct {
		name      string
		cfg       RuntimeConfig
		env       map[string]string
		wantPct   int
		wantLimit int64
	}{
		{"defaults", RuntimeConfig{}, nil, 400, 150 << 20},
		{"configured", RuntimeConfig{GCPercent: 200, MemoryLimitMiB: 512}, nil, 200, 512 << 20},
		{"variables win", RuntimeConfig{GCPercent: 200, MemoryLimitMiB: 512}, map[string]string{"GOGC": "100", "GOMEMLIMIT": "1GiB"}, 100, 1 << 40},
	} {
		t.Run(tc.name, func(t *testing.T) {
			debug.SetGCPercent(100)
			debug.SetMemoryLimit(1 << 40)
			ApplyRuntime(tc.cfg, env(tc.env), log)
			gotPct := debug.SetGCPercent(100)
			gotLimit := debug.SetMemoryLimit(-1)
			if gotPct != tc.wantPct || gotLimit != tc.wantLimit {
				t.Errorf("GC percent %d, memory limit %d; want %d, %d", gotPct, gotLimit, tc.wantPct, tc.wantLimit)
			}
		})
	}
}

// TestRouteRedisLogs: go-redis's own lines (here: dials to a closed port)
// come out as the configured logger's JSON, not as plain text.
func TestRouteRedisLogs(t *testing.T) {
	var buf syncBuffer
	RouteRedisLogs(slog.New(slog.NewJSONHandler(&buf, nil)))
	t.Cleanup(func() { RouteRedisLogs(slog.Default()) })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close() // nothing listens there now
	rdb := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 100 * time.Millisecond})
	defer rdb.Close()
	for range 10 { // go-redis logs after a few failed dials
		if rdb.Ping(t.Context()).Err() == nil {
			t.Fatal("a ping to a closed port succeeded")
		}
		if buf.String() != "" {
			break
		}
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) == 0 || lines[0] == "" {
		t.Fatal("go-redis logged nothing after 10 failed dials")
	}
	for _, l := range lines {
		var rec map[string]any
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec["component"] != "go-redis" || rec["level"] != "WARN" {
			t.Errorf("log line %q: want a JSON warning from component go-redis (%v)", l, err)
		}
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a logger.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
