package daemon

import (
	"io"
	"log/slog"
	"runtime/debug"
	"testing"
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
