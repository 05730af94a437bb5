package daemon

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// storeHealth is the "store health" actor: it pings Redis (every master of
// a cluster) every interval, and reports to set whether it is reachable:
// unreachable after failures pings in a row, reachable again after one
// that succeeds. The health service and /readyz follow it (see
// server.Server.SetStoreReachable).
type storeHealth struct {
	rdb      redis.UniversalClient
	set      func(ok bool)
	log      *slog.Logger
	interval time.Duration
	failures int

	ready atomic.Bool
}

// The store probe's settings: a probe every second, each bounded by
// probeTimeout; two failures in a row make the store unreachable.
const (
	probeInterval = time.Second
	probeTimeout  = 500 * time.Millisecond
	probeFailures = 2
)

func newStoreHealth(rdb redis.UniversalClient, set func(bool), log *slog.Logger) *storeHealth {
	h := &storeHealth{rdb: rdb, set: set, log: log, interval: probeInterval, failures: probeFailures}
	h.ready.Store(true)
	return h
}

func (h *storeHealth) run(ctx context.Context) error {
	t := time.NewTicker(h.interval)
	defer t.Stop()
	failed := 0
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		err := h.ping(ctx)
		switch {
		case ctx.Err() != nil:
			return nil
		case err == nil && !h.ready.Load():
			failed = 0
			h.ready.Store(true)
			h.set(true)
			h.log.Info("Redis reachable again: ingest, profiles and actions are SERVING")
		case err == nil:
			failed = 0
		case h.ready.Load():
			if failed++; failed >= h.failures {
				h.ready.Store(false)
				h.set(false)
				h.log.Warn("Redis unreachable: ingest, profiles and actions report NOT_SERVING; decisions answer degraded", "err", err)
			}
		}
	}
}

// ping reaches Redis, every master of a cluster.
func (h *storeHealth) ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	if c, ok := h.rdb.(*redis.ClusterClient); ok {
		return c.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return m.Ping(ctx).Err() })
	}
	return h.rdb.Ping(ctx).Err()
}

// readyz answers 200 while the store is reachable, else 503: a readiness
// probe for load balancers that speak HTTP. /healthz answers 200 while the
// process serves.
func (h *storeHealth) readyz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !h.ready.Load() {
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = w.Write([]byte("not ready: Redis unreachable\n"))
		return
	}
	_, _ = w.Write([]byte("ready\n"))
}

func healthz(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	_, _ = w.Write([]byte("ok\n"))
}
