// Package daemon builds and runs nudged from a plain Config: the store
// (Redis, or the embedded development store), the rules, the gRPC server
// with its TLS, tokens, metrics and traces, and its graceful shutdown. Load
// builds the Config from a YAML file, NUDGE_* variables and flags;
// cmd/nudged only calls Load and Run.
package daemon

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/examples"
	"github.com/nudge-dm/nudge/internal/console"
	"github.com/nudge-dm/nudge/profile/redisstore"
	"github.com/nudge-dm/nudge/server"
)

func (c Config) withDefaults() Config {
	d := Defaults()
	setDefault(&c.Listen, d.Listen)
	setDefault(&c.DrainTimeout, d.DrainTimeout)
	setDefault(&c.Rules.Reload, d.Rules.Reload)
	setDefault(&c.Delivery.OutboxRetention, d.Delivery.OutboxRetention)
	setDefault(&c.Delivery.TrimInterval, d.Delivery.TrimInterval)
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// setDefault sets *p to d when it is the zero value.
func setDefault[T comparable](p *T, d T) {
	var zero T
	if *p == zero {
		*p = d
	}
}

// listenerAddr is lis's address, or "off" when there is none.
func listenerAddr(lis net.Listener) string {
	if lis == nil {
		return HTTPListenOff
	}
	return lis.Addr().String()
}

// Run starts nudged and serves until ctx ends, then shuts down gracefully:
// it stops accepting, answers the ingest batches in flight, waits at most
// DrainTimeout, then stops the other actors (actors.go) and joins them.
// ready, if not nil, is called with the gRPC address once the server
// accepts calls.
func Run(ctx context.Context, cfg Config, ready func(addr net.Addr)) error {
	cfg = cfg.withDefaults()
	log := cfg.Logger
	// Load has read these already; a Config built by hand has not.
	if err := cfg.resolveFiles(); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	tokens, err := cfg.tokens()
	if err != nil {
		return err
	}

	rules, err := loadRules(cfg)
	if err != nil {
		return err
	}
	triggers, offers := rules.Rules().Counts()
	log.Info("rules loaded", "source", rulesSource(cfg), "version", rules.Rules().Version(), "triggers", triggers, "offers", offers)

	var creds credentials.TransportCredentials
	var httpTLS *tls.Config
	if cfg.TLS.Enabled() {
		certs, err := newCertReloader(cfg.TLS, log)
		if err != nil {
			return err
		}
		creds = credentials.NewTLS(certs.serverConfig())
		httpTLS = certs.httpConfig()
	}

	rdb, closeStore, err := openRedis(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeStore()
	waitReplicas, err := resolveWaitReplicas(ctx, cfg.Redis, countReplicas(rdb), log)
	if err != nil {
		return err
	}

	httpAddr, _ := cfg.httpListen() // Validate checked it
	// The console's overview samples the metrics in-process: a reader of
	// its own, whether or not /metrics is served.
	var consoleReader *sdkmetric.ManualReader
	var readers []sdkmetric.Reader
	if httpAddr != "" && cfg.HTTP.Console.Enabled {
		consoleReader = sdkmetric.NewManualReader()
		readers = append(readers, consoleReader)
	}
	metrics, err := startMetrics(cfg.Metrics, cfg.Tracing.ServiceName, log, readers...)
	if err != nil {
		return err
	}
	defer metrics.close()
	tp, stopTracing, err := startTracing(ctx, cfg.Tracing, log)
	if err != nil {
		return err
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := stopTracing(sctx); err != nil {
			log.Warn("flushing traces failed", "err", err)
		}
	}()

	storeOpt := cfg.storeOptions(waitReplicas, tp)
	memLimit := debug.SetMemoryLimit(-1) // a negative value only reads it
	if n, capped := fitNearCache(storeOpt.NearCache.MaxBytes, memLimit); capped {
		log.Info("near-cache limited to half of the soft memory limit", "near_cache_mib", n>>20,
			"configured_mib", cfg.NearCache.MaxMiB, "memory_limit_mib", memLimit>>20)
		storeOpt.NearCache.MaxBytes = n
	}
	storeOpt.NearCache.OnTrackingError = func(err error) {
		log.Warn("near-cache bypassed until tracking is back", "err", err)
	}
	store := redisstore.New(rdb, storeOpt)
	if err := registerStoreMetrics(metrics.meter, store.Stats); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if err := registerReplicationMetrics(metrics.meter, waitReplicas, store.Stats); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	if err := registerNearCacheMetrics(metrics.meter, store.NearCache); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	auditLog := audit.New(rdb, audit.Options{Sample: cfg.Decision.AuditSample})
	outbox := delivery.New(rdb, store.Layout(), delivery.Options{
		Visibility: cfg.Delivery.VisibilityTimeout, MaxDeliveries: cfg.Delivery.MaxDeliveries, GroupIdle: cfg.Delivery.GroupIdle,
	})
	rulesMetrics, err := registerDaemonMetrics(metrics.meter, rules, outbox, log)
	if err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	// nil without webhooks; registers the nudge.webhook.* metrics.
	webhooks, err := newWebhooks(cfg, outbox, metrics.meter, rules.Rules().Channels(), log)
	if err != nil {
		return err
	}
	srv, err := server.New(store, rules, cfg.serverConfig(tokens, outbox, auditLog, metrics.meter, store))
	if err != nil {
		return err
	}
	opts := []grpc.ServerOption{grpcServerStats(tp, metrics.provider)}
	var webUI *webConsole
	if consoleReader != nil {
		if webUI, err = newWebConsole(cfg, srv, rules, consoleReader, outbox, auditLog, opts, log); err != nil {
			return err
		}
	}
	if creds != nil {
		opts = append(opts, grpc.Creds(creds))
	}
	g := srv.NewGRPCServer(opts...)
	health := newStoreHealth(rdb, srv.SetStoreReachable, log)
	metrics.handle("/readyz", health.readyz)
	metrics.handle("/healthz", healthz)
	var httpSrv *http.Server
	if httpAddr != "" {
		h, err := newHTTPHandler(g, srv.Admit, health.readyz, cmp.Or(cfg.Limits.MaxMessageBytes, server.DefaultConfig().MaxRecvMsgBytes))
		if err != nil {
			return err
		}
		if webUI != nil {
			h = webUI.mount(h)
		}
		httpSrv = newHTTPServer(h, httpTLS, cmp.Or(cfg.Limits.MaxStreamsPerConn, server.DefaultConfig().MaxStreamsPerConn), log)
		if webUI != nil {
			// The console's live streams last as long as their pages: end
			// them when the listener shuts down, not at its drain timeout.
			httpSrv.RegisterOnShutdown(webUI.handler.Close)
		}
	}

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	var httpLis net.Listener
	if httpSrv != nil {
		if httpLis, err = net.Listen("tcp", httpAddr); err != nil {
			_ = lis.Close()
			return fmt.Errorf("http.listen on %s: %w (set --http-listen to a free host:port, or off)", httpAddr, err)
		}
	}

	rl := rulesReloads{rules: rules, metrics: rulesMetrics, log: log}
	// Stopped in the reverse order: the gRPC server drains first, and the
	// audit writer flushes what the last decisions logged.
	parts := actors{log: log}
	parts.add("audit", func(ctx context.Context) error { auditLog.Run(ctx); return nil })
	parts.add("metrics", metrics.serve)
	parts.add("store health", health.run)
	parts.add("outbox trimmer", func(ctx context.Context) error { trimLoop(ctx, outbox, cfg, rulesMetrics, log); return nil })
	parts.add("timers", func(ctx context.Context) error {
		return srv.RunTimers(ctx, store, server.TimerConfig{Poll: cfg.Timers.Poll, Batch: cfg.Timers.Batch})
	})
	parts.add("near-cache tracking", func(ctx context.Context) error {
		err := store.Track(ctx)
		if errors.Is(err, redisstore.ErrTrackingUnsupported) {
			log.Warn("near-cache off: this Redis does not offer client tracking; every decision reads Redis", "err", err)
			err = nil
		}
		if err == nil { // off or unsupported: nothing to do until the end
			<-ctx.Done()
		}
		return err
	})
	parts.add("measurement", func(ctx context.Context) error {
		return srv.RunMeasures(ctx, server.MeasureConfig{Refresh: cfg.Measurement.Refresh, MetricsRefresh: cfg.Measurement.MetricsRefresh})
	})
	parts.add("rules watcher", rl.watch(cfg.Rules.File != "", cfg.Rules.Reload))
	if webhooks != nil {
		// Stopped after the gRPC server drains: its requests in flight
		// finish, and what it holds goes back to the webhooks' groups.
		parts.add("webhooks", webhooks.Run)
	}
	// SIGHUP is caught from here on, before anything serves: its default
	// action ends the process, and an operator (or a test) may send one as
	// soon as nudged logs that it serves.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	parts.add("SIGHUP", rl.onSIGHUP(hup))
	if webUI != nil {
		// Stopped after the HTTP listener, whose console pages call it.
		parts.add("console", webUI.run)
	}
	parts.add("grpc", func(ctx context.Context) error {
		log.Info("nudged serving", "listen", lis.Addr().String(), "http", listenerAddr(httpLis), "tls", tlsMode(cfg.TLS), "auth", authMode(tokens))
		if webUI != nil && httpLis != nil {
			scheme := "http"
			if httpTLS != nil {
				scheme = "https"
			}
			log.Info("console serving", "url", scheme+"://"+httpLis.Addr().String()+console.Prefix)
		}
		if len(tokens) == 0 {
			log.Warn("no auth tokens configured: every caller may call every method", "listen", lis.Addr().String(), "loopback", isLoopback(cfg.Listen))
		}
		for _, t := range tokens {
			if slices.Contains(t.Roles, server.RoleSubscribe) && len(t.Groups) == 0 {
				log.Warn("token has the subscribe role but no groups: it may use no consumer group; list them in its groups", "token", t.Name)
			}
		}
		return serveGRPC(ctx, srv, g, lis, cfg.DrainTimeout, log, ready)
	})
	if httpSrv != nil {
		// Added after the gRPC server, so stopped before it: the HTTP
		// calls in flight are gRPC calls of that server.
		parts.add("http", func(ctx context.Context) error {
			return serveHTTP(ctx, httpSrv, httpLis, cfg.DrainTimeout)
		})
	}
	if err := parts.run(ctx); err != nil {
		return err
	}
	log.Info("stopped")
	return nil
}

// storeOptions are the Redis store's options from c (zero fields: the
// store's defaults).
func (c Config) storeOptions(waitReplicas int, tp trace.TracerProvider) redisstore.Options {
	return redisstore.Options{
		Buckets:         c.Buckets,
		TTL:             c.Profile.TTL,
		MaxAttempts:     c.Redis.MaxAttempts,
		MaxErrorRetries: c.Redis.MaxErrorRetries,
		MaxRedirects:    c.Redis.MaxRedirects,
		BackoffMin:      c.Redis.BackoffMin,
		BackoffMax:      c.Redis.BackoffMax,
		MaxGroupUsers:   c.Redis.MaxGroupUsers,
		Parallelism:     c.Redis.Parallelism,
		Shards:          c.Redis.Shards,
		UserLocks:       c.Redis.UserLocks,
		WaitReplicas:    waitReplicas,
		WaitTimeout:     c.Redis.WaitTimeout,
		TracerProvider:  tp,
		NearCache:       c.nearCache(),
	}
}

// fitNearCache caps the near-cache (max bytes) at half of the process's
// soft memory limit (memLimit; math.MaxInt64 when there is none): a cache
// that can grow past the heap the garbage collector is told to keep makes
// it collect without end once enough profiles are cached (100,000 profiles
// of 90 days outgrow 150 MiB), and every call pays for it. It reports
// whether it capped.
func fitNearCache(max, memLimit int64) (int64, bool) {
	if max <= 0 || memLimit <= 0 || memLimit == math.MaxInt64 {
		return max, false
	}
	if half := memLimit / 2; max > half {
		return half, true
	}
	return max, false
}

// nearCache is the store's near-cache from c: none on the embedded store,
// which is in this process already and offers no client tracking.
func (c Config) nearCache() redisstore.NearCacheOptions {
	if c.Redis.Addr == "" && !c.Redis.IsCluster() {
		return redisstore.NearCacheOptions{}
	}
	return redisstore.NearCacheOptions{
		MaxBytes:   int64(c.NearCache.MaxMiB) << 20,
		MaxSilence: c.NearCache.MaxSilence,
		Heartbeat:  c.NearCache.Heartbeat,
	}
}

// serverConfig is the gRPC server's configuration from c (zero fields: the
// server's defaults).
func (c Config) serverConfig(tokens []server.Token, outbox *delivery.Outbox, auditLog *audit.Log, meter metric.Meter, measures server.MeasureStore) server.Config {
	return server.Config{
		Limits:            c.Profile.Limits,
		Outbox:            outbox,
		MaxUnacked:        c.Delivery.MaxUnacked,
		DefaultBudget:     c.Decision.Budget,
		MaxBudget:         c.Decision.BudgetMax,
		ReservationTTL:    c.Decision.ReservationTTL,
		MaxInFlight:       c.Limits.MaxInFlight,
		MaxInFlightEvents: c.Limits.MaxInFlightEvents,
		MaxPendingReads:   c.Limits.MaxPendingReads,
		BreakerFailures:   c.Decision.BreakerFailures,
		BreakerCooldown:   c.Decision.BreakerCooldown,
		MaxRecvMsgBytes:   c.Limits.MaxMessageBytes,

		MaxRecvBytesInFlight: c.Limits.MaxRecvBytesInFlight,
		MaxStreamsPerConn:    c.Limits.MaxStreamsPerConn,
		StreamWorkers:        c.Limits.StreamWorkers,
		MaxConnectionIdle:    c.Limits.MaxConnectionIdle,
		KeepaliveTime:        c.Limits.KeepaliveTime,
		KeepaliveTimeout:     c.Limits.KeepaliveTimeout,
		KeepaliveMinTime:     c.Limits.KeepaliveMinTime,
		StreamIdle:           c.Limits.StreamIdle,

		Tokens:     tokens,
		LogUserIDs: c.Log.UserIDs,
		Logger:     c.Logger,
		Meter:      meter,
		Audit:      auditLog,

		// Read back through AdminService (nudgectl decisions tail,
		// actions dead).
		DecisionLog: auditLog,
		DeadLetters: outbox,

		Measures:      measures,
		ExposureQueue: c.Measurement.ExposureQueue,
	}
}

func tlsMode(c TLSConfig) string {
	switch {
	case c.ClientCAFile != "":
		return "mutual"
	case c.Enabled():
		return "on"
	}
	return "off"
}

func authMode(tokens []server.Token) string {
	if len(tokens) == 0 {
		return "off"
	}
	return fmt.Sprintf("%d tokens", len(tokens))
}

// trimLoop trims the outbox every TrimInterval until ctx ends (see
// delivery.Outbox.Trim: never an entry a live group still needs), and
// counts what it trimmed past abandoned groups.
func trimLoop(ctx context.Context, outbox *delivery.Outbox, cfg Config, m *daemonMetrics, log *slog.Logger) {
	t := time.NewTicker(cfg.Delivery.TrimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			res, err := outbox.Trim(ctx, cfg.Delivery.OutboxRetention, time.Now())
			switch {
			case err != nil && ctx.Err() == nil:
				log.Warn("outbox trim failed; retrying at the next interval", "err", err)
			case res.PastAbandoned > 0:
				m.trimmedPastAbandoned.Add(ctx, res.PastAbandoned)
				log.Warn("outbox trimmed past abandoned consumer groups: they lost actions they had not acknowledged",
					"removed", res.Removed, "past_abandoned", res.PastAbandoned, "abandoned", res.Abandoned)
			case res.Removed > 0:
				log.Info("outbox trimmed", "removed", res.Removed)
			}
		}
	}
}

func rulesSource(cfg Config) string {
	if cfg.Rules.File == "" {
		return examples.RulesName
	}
	return cfg.Rules.File
}

func loadRules(cfg Config) (*decision.Live, error) {
	limits := decision.WithLimits(cfg.Rules.Limits)
	if cfg.Rules.File != "" {
		return decision.LoadLive(cfg.Rules.File, limits)
	}
	r, err := decision.Parse(examples.RulesName, examples.Rules, limits)
	if err != nil {
		return nil, err
	}
	return decision.NewLive(r, examples.RulesName), nil
}

// RedisOptions returns the go-redis options nudge runs with for an address
// (host:port or a redis:// URL) and otherwise default settings. Tests and
// tools that stand in for nudged use it too, so they cannot drift from what
// nudged does.
func RedisOptions(addr string) (*redis.Options, error) {
	d := Defaults().Redis
	d.Addr = addr
	return d.Options()
}

// Options returns the go-redis options for c.
func (c RedisConfig) Options() (*redis.Options, error) {
	opt := &redis.Options{Addr: c.Addr}
	if strings.Contains(c.Addr, "://") {
		var err error
		if opt, err = redis.ParseURL(c.Addr); err != nil {
			return nil, fmt.Errorf("redis.addr: %w", err)
		}
	}
	if c.Username != "" {
		opt.Username = c.Username
	}
	if c.Password != "" {
		opt.Password = c.Password
	}
	if c.DB != 0 {
		opt.DB = c.DB
	}
	opt.DialTimeout = c.DialTimeout
	opt.ReadTimeout = c.ReadTimeout
	opt.WriteTimeout = c.WriteTimeout
	if c.TLS.Enabled || opt.TLSConfig != nil {
		tc, err := c.TLS.config(opt.Addr)
		if err != nil {
			return nil, err
		}
		opt.TLSConfig = tc
	}
	// Without this go-redis ignores context deadlines for socket I/O and
	// waits ReadTimeout and its retries: a decision's budget must cut a
	// read short, and a cut connection is cheap to replace.
	opt.ContextTimeoutEnabled = true
	// nudge retries where it is safe and bounded (the store's transaction
	// loop); go-redis's own retries would spend a decision's whole budget
	// redialling a Redis that is down instead of degrading at once.
	opt.MaxRetries = -1
	// Every ActionService subscriber holds a connection for its blocking
	// XREADGROUP: leave room for them beside the ingest transactions.
	opt.PoolSize = max(c.PoolSize, opt.PoolSize, 64)
	return opt, nil
}

// openRedis connects to the configured Redis, or starts the embedded store.
func openRedis(ctx context.Context, cfg Config) (redis.UniversalClient, func(), error) {
	if cfg.Redis.IsCluster() {
		return openCluster(ctx, cfg)
	}
	if cfg.Redis.Addr == "" {
		mr := miniredis.NewMiniRedis()
		if err := mr.StartAddr("127.0.0.1:0"); err != nil {
			return nil, nil, fmt.Errorf("start embedded store: %w", err)
		}
		cfg.Logger.Warn("NOT DURABLE: no --redis-addr given, using the embedded in-process store; " +
			"every profile and action is lost when nudged stops. Use --redis-addr in production.")
		opt, _ := RedisOptions(mr.Addr()) // a host:port cannot fail
		rdb := redis.NewClient(opt)
		return rdb, func() { _ = rdb.Close(); mr.Close() }, nil
	}
	opt, err := cfg.Redis.Options()
	if err != nil {
		return nil, nil, err
	}
	rdb := redis.NewClient(opt)
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pingCtx).Err(); err != nil {
		_ = rdb.Close()
		if redis.IsAuthError(err) {
			return nil, nil, fmt.Errorf("the Redis at %s refused nudged's credentials (redis.username, redis.password): %w", opt.Addr, err)
		}
		return nil, nil, fmt.Errorf("cannot reach Redis at %s: %w", opt.Addr, err)
	}
	cfg.Logger.Info("using Redis", "addr", opt.Addr, "tls", opt.TLSConfig != nil, "user", opt.Username)
	return rdb, func() { _ = rdb.Close() }, nil
}

// openCluster connects to the configured Redis Cluster and checks that
// every master answers and the cluster serves all its slots.
func openCluster(ctx context.Context, cfg Config) (redis.UniversalClient, func(), error) {
	opt, err := cfg.Redis.ClusterOptions()
	if err != nil {
		return nil, nil, err
	}
	rdb := redis.NewClusterClient(opt)
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	err = rdb.ForEachMaster(pingCtx, func(ctx context.Context, c *redis.Client) error {
		return c.Ping(ctx).Err()
	})
	var info string
	if err == nil {
		info, err = rdb.ClusterInfo(pingCtx).Result()
	}
	if err == nil && !strings.Contains(info, "cluster_state:ok") {
		err = errors.New("cluster_state is not ok: some slots have no master")
	}
	if err != nil {
		_ = rdb.Close()
		if redis.IsAuthError(err) {
			return nil, nil, fmt.Errorf("the Redis Cluster at %s refused nudged's credentials (redis.username, redis.password): %w", strings.Join(opt.Addrs, ","), err)
		}
		return nil, nil, fmt.Errorf("cannot use the Redis Cluster at %s: %w", strings.Join(opt.Addrs, ","), err)
	}
	cfg.Logger.Info("using Redis Cluster", "seeds", strings.Join(opt.Addrs, ","), "tls", opt.TLSConfig != nil, "user", opt.Username)
	return rdb, func() { _ = rdb.Close() }, nil
}
