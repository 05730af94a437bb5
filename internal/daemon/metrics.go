package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/attribute"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/profile/redisstore"
)

// metricsEndpoint serves /metrics (Prometheus text format) from an
// OpenTelemetry meter provider.
type metricsEndpoint struct {
	meter    metric.Meter
	provider metric.MeterProvider
	sdk      *sdkmetric.MeterProvider
	srv      *http.Server
	mux      *http.ServeMux
	lis      net.Listener
}

// handle serves h at path on the metrics listener, if there is one.
func (m *metricsEndpoint) handle(path string, h http.HandlerFunc) {
	if m.mux != nil {
		m.mux.HandleFunc(path, h)
	}
}

// startMetrics starts the /metrics listener (and /debug/pprof/ when
// asked). Without an address it returns a meter that feeds only the
// extra readers (the console's), or a no-op meter without them.
func startMetrics(cfg MetricsConfig, serviceName string, log *slog.Logger, extra ...sdkmetric.Reader) (*metricsEndpoint, error) {
	if serviceName == "" {
		serviceName = "nudged"
	}
	res := resource.NewSchemaless(attribute.String("service.name", serviceName))
	addr := cfg.Listen
	if addr == "" {
		if cfg.Pprof {
			log.Warn("pprof asked for but metrics.listen is empty: pprof is off")
		}
		if len(extra) == 0 {
			p := noop.NewMeterProvider()
			return &metricsEndpoint{meter: p.Meter(""), provider: p}, nil
		}
		opts := []sdkmetric.Option{sdkmetric.WithResource(res), sdkmetric.WithView(rpcDurationView)}
		for _, r := range extra {
			opts = append(opts, sdkmetric.WithReader(r))
		}
		provider := sdkmetric.NewMeterProvider(opts...)
		return &metricsEndpoint{meter: provider.Meter("github.com/nudge-dm/nudge"), provider: provider, sdk: provider}, nil
	}
	reg := prometheus.NewRegistry()
	// The Go runtime and the process (RSS, CPU, open files) beside nudge's
	// own figures.
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("metrics exporter: %w", err)
	}
	opts := []sdkmetric.Option{sdkmetric.WithReader(exp), sdkmetric.WithResource(res), sdkmetric.WithView(rpcDurationView)}
	for _, r := range extra {
		opts = append(opts, sdkmetric.WithReader(r))
	}
	provider := sdkmetric.NewMeterProvider(opts...)
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	if cfg.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/cmdline", redactedCmdline)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
		log.Warn("pprof serving on the metrics listener: keep it off networks you do not trust", "addr", "http://"+lis.Addr().String()+"/debug/pprof/")
	}
	log.Info("metrics serving", "addr", "http://"+lis.Addr().String()+"/metrics")
	return &metricsEndpoint{
		meter:    provider.Meter("github.com/nudge-dm/nudge"),
		provider: provider,
		sdk:      provider,
		srv:      &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second},
		mux:      mux,
		lis:      lis,
	}, nil
}

// redactedCmdline is pprof.Cmdline with secrets redacted (RedactArgs):
// --redis-password in clear was on the page.
func redactedCmdline(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprint(w, strings.Join(RedactArgs(os.Args), "\x00"))
}

// serve answers scrapes until ctx ends (the "metrics" actor), then shuts
// the listener and the meter provider down. Without a listener it only
// waits.
func (m *metricsEndpoint) serve(ctx context.Context) error {
	if m.srv == nil {
		<-ctx.Done()
		return nil
	}
	errc := make(chan error, 1)
	go func() { errc <- m.srv.Serve(m.lis) }()
	select {
	case err := <-errc:
		return fmt.Errorf("metrics listener: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(sctx)
	<-errc // ErrServerClosed
	_ = m.sdk.Shutdown(sctx)
	return nil
}

// close releases a listener that never served (Run failed before its
// actors started).
func (m *metricsEndpoint) close() {
	if m.lis != nil {
		_ = m.lis.Close()
	}
}

// daemonMetrics are the figures only the daemon sees: rules reloads, the
// outbox backlog per consumer group, and abandoned groups.
type daemonMetrics struct {
	reloads    metric.Int64Counter
	reloadAttr map[string]metric.AddOption
	// trimmedPastAbandoned counts the outbox entries trimmed that an
	// abandoned group had not acknowledged (trimLoop adds them).
	trimmedPastAbandoned metric.Int64Counter
}

// registerDaemonMetrics registers the rules and outbox figures on m.
func registerDaemonMetrics(m metric.Meter, rules *decision.Live, outbox *delivery.Outbox, log *slog.Logger) (*daemonMetrics, error) {
	d := &daemonMetrics{reloadAttr: make(map[string]metric.AddOption)}
	var err error
	if d.reloads, err = m.Int64Counter("nudge.rules.reloads", metric.WithDescription("Rules reload attempts, by result (changed, unchanged, failed).")); err != nil {
		return nil, err
	}
	for _, r := range []string{"changed", "unchanged", "failed"} {
		d.reloadAttr[r] = metric.WithAttributeSet(attribute.NewSet(attribute.String("result", r)))
	}
	info, err := m.Int64ObservableGauge("nudge.rules.info", metric.WithDescription("1 for the rules in force, labelled with their version."))
	if err != nil {
		return nil, err
	}
	loadedAt, err := m.Float64ObservableGauge("nudge.rules.loaded_at", metric.WithUnit("s"), metric.WithDescription("Unix time the rules in force were loaded."))
	if err != nil {
		return nil, err
	}
	refused, err := m.Int64ObservableGauge("nudge.rules.refused", metric.WithDescription("1 while the rules file on disk was refused (the previous rules keep serving), else 0."))
	if err != nil {
		return nil, err
	}
	pending, err := m.Int64ObservableGauge("nudge.outbox.pending", metric.WithDescription("Actions delivered to a consumer group and not yet acknowledged."))
	if err != nil {
		return nil, err
	}
	undelivered, err := m.Int64ObservableGauge("nudge.outbox.undelivered", metric.WithDescription("Actions in the outbox not yet delivered to a consumer group."))
	if err != nil {
		return nil, err
	}
	abandoned, err := m.Int64ObservableGauge("nudge.outbox.abandoned", metric.WithDescription("1 for a consumer group no member has read from or acknowledged for delivery.group_idle: trimming no longer keeps actions for it past the retention; else 0."))
	if err != nil {
		return nil, err
	}
	idle, err := m.Float64ObservableGauge("nudge.outbox.idle", metric.WithUnit("s"), metric.WithDescription("Time since a member of the consumer group last read or acknowledged (to within a few seconds)."))
	if err != nil {
		return nil, err
	}
	if d.trimmedPastAbandoned, err = m.Int64Counter("nudge.outbox.trimmed_past_abandoned", metric.WithDescription("Outbox entries trimmed that an abandoned consumer group had not acknowledged: lost for that group.")); err != nil {
		return nil, err
	}
	// Shown from the start, at 0, so that a query of its rate finds it.
	d.trimmedPastAbandoned.Add(context.Background(), 0)
	_, err = m.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		r := rules.Rules()
		o.ObserveInt64(info, 1, metric.WithAttributes(attribute.String("version", r.Version())))
		o.ObserveFloat64(loadedAt, float64(rules.LoadedAt().UnixNano())/1e9)
		if _, ok := rules.Refused(); ok {
			o.ObserveInt64(refused, 1)
		} else {
			o.ObserveInt64(refused, 0)
		}
		// Two round trips per scrape (delivery.Outbox.Groups), bounded
		// so a slow Redis does not hold the scrape.
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		groups, err := outbox.Groups(ctx, time.Now())
		if err != nil {
			log.Warn("metrics: reading the outbox backlog failed", "err", err)
			return nil
		}
		for _, g := range groups {
			attrs := metric.WithAttributes(attribute.String("group", g.Name))
			o.ObserveInt64(pending, g.Pending, attrs)
			o.ObserveInt64(undelivered, g.Undelivered, attrs)
			if g.Abandoned {
				o.ObserveInt64(abandoned, 1, attrs)
			} else {
				o.ObserveInt64(abandoned, 0, attrs)
			}
			if !g.LastActive.IsZero() {
				o.ObserveFloat64(idle, g.Idle.Seconds(), attrs)
			}
		}
		return nil
	}, info, loadedAt, refused, pending, undelivered, abandoned, idle)
	return d, err
}

// reloaded counts a rules reload attempt.
func (d *daemonMetrics) reloaded(ctx context.Context, changed bool, err error) {
	switch {
	case err != nil:
		d.reloads.Add(ctx, 1, d.reloadAttr["failed"])
	case changed:
		d.reloads.Add(ctx, 1, d.reloadAttr["changed"])
	default:
		d.reloads.Add(ctx, 1, d.reloadAttr["unchanged"])
	}
}

// registerReplicationMetrics registers the figures of WAIT (see
// RedisConfig.WaitReplicas): the replicas each ingest write waits for, as
// decided at start-up, and the transactions whose WAIT fell short, whose
// batches were answered UNAVAILABLE.
func registerReplicationMetrics(m metric.Meter, waitReplicas int, stats func() redisstore.Stats) error {
	wait, err := m.Int64ObservableGauge("nudge.store.wait_replicas", metric.WithDescription("Replicas each ingest write waits for (WAIT) before it is acknowledged; 0: none."))
	if err != nil {
		return err
	}
	failed, err := m.Int64ObservableCounter("nudge.store.replication_waits_failed", metric.WithDescription("Transactions written on the master but confirmed by fewer replicas than wait_replicas within wait_timeout; their events were answered UNAVAILABLE."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		o.ObserveInt64(wait, int64(waitReplicas))
		o.ObserveInt64(failed, int64(stats().ReplicationWaitsFailed))
		return nil
	}, wait, failed)
	return err
}

// rpcDurationView gives otelgrpc's call duration histogram buckets that
// resolve a decision's sub-millisecond handling time: the SDK's default
// boundaries (0, 5, 10, 25 ... in the instrument's unit, seconds) would put
// every call in one bucket.
var rpcDurationView = sdkmetric.NewView(
	sdkmetric.Instrument{Name: "rpc.server.call.duration"},
	sdkmetric.Stream{Aggregation: sdkmetric.AggregationExplicitBucketHistogram{
		Boundaries: []float64{
			0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
			0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
		},
	}},
)

// registerStoreMetrics exports a store's cumulative transaction counters as
// observable counters on m.
func registerStoreMetrics(m metric.Meter, stats func() redisstore.Stats) error {
	txns, err := m.Int64ObservableCounter("nudge.store.transactions", metric.WithDescription("Committed profile transactions (EXEC)."))
	if err != nil {
		return err
	}
	conflicts, err := m.Int64ObservableCounter("nudge.store.conflicts", metric.WithDescription("Transactions aborted by a concurrent writer and retried."))
	if err != nil {
		return err
	}
	retries, err := m.Int64ObservableCounter("nudge.store.error_retries", metric.WithDescription("Transactions retried after a Redis error."))
	if err != nil {
		return err
	}
	redirects, err := m.Int64ObservableCounter("nudge.store.redirects", metric.WithDescription("Transactions retried because their Redis Cluster slot was moving or had moved."))
	if err != nil {
		return err
	}
	exhausted, err := m.Int64ObservableCounter("nudge.store.retries_exhausted", metric.WithDescription("Users whose transaction gave up after the maximum attempts."))
	if err != nil {
		return err
	}
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := stats()
		o.ObserveInt64(txns, int64(s.Transactions))
		o.ObserveInt64(conflicts, int64(s.Conflicts))
		o.ObserveInt64(retries, int64(s.ErrorRetries))
		o.ObserveInt64(redirects, int64(s.Redirects))
		o.ObserveInt64(exhausted, int64(s.Exhausted))
		return nil
	}, txns, conflicts, retries, redirects, exhausted)
	return err
}

// registerNearCacheMetrics reports the near-cache: nudge.near_cache.reads
// by result (hit, miss, bypass: the cache down), its size, and tracking's
// state and failures.
func registerNearCacheMetrics(m metric.Meter, stats func() redisstore.NearCacheStats) error {
	reads, err := m.Int64ObservableCounter("nudge.near_cache.reads", metric.WithDescription(
		"Profile reads for decisions by result: hit (served from memory), miss (read from Redis), bypass (read from Redis: tracking down)."))
	if err != nil {
		return err
	}
	refused, err := m.Int64ObservableCounter("nudge.near_cache.refused", metric.WithDescription(
		"Profiles read from Redis but not cached because an invalidation raced the read."))
	if err != nil {
		return err
	}
	shared, err := m.Int64ObservableCounter("nudge.near_cache.shared_reads", metric.WithDescription(
		"Misses that waited for another decision's read of the same user instead of sending their own."))
	if err != nil {
		return err
	}
	invalidations, err := m.Int64ObservableCounter("nudge.near_cache.invalidations", metric.WithDescription("Invalidations applied (from Redis and from this instance's writes)."))
	if err != nil {
		return err
	}
	evictions, err := m.Int64ObservableCounter("nudge.near_cache.evictions", metric.WithDescription("Profiles evicted to stay within near_cache.max_mib."))
	if err != nil {
		return err
	}
	flushes, err := m.Int64ObservableCounter("nudge.near_cache.flushes", metric.WithDescription("Times the near-cache was emptied (tracking went down or came up, a FLUSHALL)."))
	if err != nil {
		return err
	}
	failures, err := m.Int64ObservableCounter("nudge.near_cache.tracking_failures", metric.WithDescription("Tracking connections that failed (cut, silent past near_cache.max_silence, refused) and were replaced."))
	if err != nil {
		return err
	}
	entries, err := m.Int64ObservableGauge("nudge.near_cache.entries", metric.WithDescription("Profiles in the near-cache."))
	if err != nil {
		return err
	}
	size, err := m.Int64ObservableGauge("nudge.near_cache.bytes", metric.WithUnit("By"), metric.WithDescription("Estimated memory of the near-cache's profiles."))
	if err != nil {
		return err
	}
	up, err := m.Int64ObservableGauge("nudge.near_cache.up", metric.WithDescription("1 when tracking is established on every master and the near-cache serves reads; 0 when it is bypassed."))
	if err != nil {
		return err
	}
	hit := metric.WithAttributes(attribute.String("result", "hit"))
	miss := metric.WithAttributes(attribute.String("result", "miss"))
	bypass := metric.WithAttributes(attribute.String("result", "bypass"))
	_, err = m.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := stats()
		if !s.Enabled {
			return nil
		}
		o.ObserveInt64(reads, int64(s.Hits), hit)
		o.ObserveInt64(reads, int64(s.Misses), miss)
		o.ObserveInt64(reads, int64(s.Bypasses), bypass)
		o.ObserveInt64(refused, int64(s.Refused))
		o.ObserveInt64(shared, int64(s.Shared))
		o.ObserveInt64(invalidations, int64(s.Invalidations))
		o.ObserveInt64(evictions, int64(s.Evicted))
		o.ObserveInt64(flushes, int64(s.Flushes))
		o.ObserveInt64(failures, int64(s.TrackingFailures))
		o.ObserveInt64(entries, int64(s.Entries))
		o.ObserveInt64(size, s.Bytes)
		var u int64
		if s.Up {
			u = 1
		}
		o.ObserveInt64(up, u)
		return nil
	}, reads, refused, shared, invalidations, evictions, flushes, failures, entries, size, up)
	return err
}
