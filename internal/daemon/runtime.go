package daemon

import (
	"log/slog"
	"runtime/debug"
)

// ApplyRuntime sets the garbage collector's target and the soft memory
// limit from c, except where the GOGC or GOMEMLIMIT variable (which the Go
// runtime has already applied) is set. They are process-wide: only a
// program's main calls this.
func ApplyRuntime(c RuntimeConfig, lookupEnv func(string) (string, bool), log *slog.Logger) {
	d := Defaults().Runtime
	gogc := "GOGC"
	if _, set := lookupEnv("GOGC"); !set {
		pct := c.GCPercent
		if pct == 0 {
			pct = d.GCPercent
		}
		debug.SetGCPercent(pct)
		gogc = "runtime.gc_percent"
	}
	if _, set := lookupEnv("GOMEMLIMIT"); !set {
		mib := c.MemoryLimitMiB
		if mib == 0 {
			mib = d.MemoryLimitMiB
		}
		if mib > 0 {
			debug.SetMemoryLimit(int64(mib) << 20)
		}
	}
	// SetMemoryLimit with a negative value only reads the limit.
	log.Debug("go runtime tuned", "gc_target_from", gogc, "memory_limit_bytes", debug.SetMemoryLimit(-1))
}
