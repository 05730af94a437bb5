package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"

	"github.com/redis/go-redis/v9"
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

// RouteRedisLogs sends go-redis's own log lines (a failed dial, a cluster
// reload) through log at warn level, so that they follow log.format
// instead of breaking a JSON log with plain text. go-redis has one logger
// per process: only a program's main calls this.
func RouteRedisLogs(log *slog.Logger) {
	redis.SetLogger(redisLog{log})
}

// redisLog is go-redis's logger interface on a slog.Logger.
type redisLog struct{ log *slog.Logger }

func (l redisLog) Printf(ctx context.Context, format string, v ...any) {
	l.log.WarnContext(ctx, strings.TrimPrefix(fmt.Sprintf(format, v...), "redis: "), "component", "go-redis")
}
