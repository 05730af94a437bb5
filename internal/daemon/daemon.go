// Package daemon builds and runs nudged from a plain Config: the store
// (Redis, or the embedded development store), the rules, the gRPC server,
// and its graceful shutdown. cmd/nudged only maps flags and environment
// variables onto Config.
package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/examples"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/server"
)

// Config is everything nudged can be told. The zero value of a field means
// its default.
type Config struct {
	// Listen is the gRPC address. Default 127.0.0.1:7070.
	Listen string
	// RedisAddr is host:port or a redis:// URL. Empty starts the embedded,
	// in-process store: for development only, it keeps nothing across
	// restarts.
	RedisAddr string
	// RulesPath is the rules file. Empty uses the bundled
	// examples/rules.yaml.
	RulesPath string
	// RulesReload is how often the rules file is checked for changes; a
	// file that does not compile is refused and the old rules keep serving.
	// Default 5s; negative disables reloading.
	RulesReload time.Duration
	// MetricsListen is the HTTP address of /metrics. Empty: off.
	MetricsListen string
	// Buckets is the number of key buckets (profile.Options.Buckets).
	Buckets int
	// DrainTimeout bounds the graceful shutdown. Default 10s.
	DrainTimeout time.Duration
	// DecisionBudget and DecisionBudgetMax are GetDecision's default and
	// largest budget (server.Config).
	DecisionBudget, DecisionBudgetMax time.Duration
	// AuditSample is the share of decisions logged to the audit stream
	// (audit.Options.Sample). Zero: none.
	AuditSample float64
	// ReservationTTL is how long a reserved cap slot waits for its
	// confirming message_sent event (server.Config).
	ReservationTTL time.Duration
	// Visibility and MaxDeliveries configure action delivery
	// (delivery.Options).
	Visibility    time.Duration
	MaxDeliveries int
	// MaxUnacked bounds the actions one subscriber holds unacknowledged
	// (server.Config).
	MaxUnacked int
	// OutboxRetention is how long acknowledged actions stay in the outbox
	// (for replay by a new group) before trimming. Default 24h.
	OutboxRetention time.Duration
	// TrimInterval is how often the outbox is trimmed. Default 1m.
	TrimInterval time.Duration
	// Logger receives the logs. Default slog.Default().
	Logger *slog.Logger
}

func (c Config) withDefaults() Config {
	if c.Listen == "" {
		c.Listen = "127.0.0.1:7070"
	}
	if c.RulesReload == 0 {
		c.RulesReload = 5 * time.Second
	}
	if c.OutboxRetention <= 0 {
		c.OutboxRetention = 24 * time.Hour
	}
	if c.TrimInterval <= 0 {
		c.TrimInterval = time.Minute
	}
	if c.DrainTimeout <= 0 {
		c.DrainTimeout = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// Run starts nudged and serves until ctx ends, then shuts down gracefully:
// it stops accepting, answers the ingest batches in flight, and waits at
// most DrainTimeout. ready, if not nil, is called with the gRPC address once
// the server accepts calls.
func Run(ctx context.Context, cfg Config, ready func(addr net.Addr)) error {
	cfg = cfg.withDefaults()
	log := cfg.Logger

	rules, err := loadRules(cfg)
	if err != nil {
		return err
	}
	triggers, offers := rules.Rules().Counts()
	log.Info("rules loaded", "source", rulesSource(cfg), "version", rules.Rules().Version(), "triggers", triggers, "offers", offers)

	rdb, closeStore, err := openRedis(ctx, cfg)
	if err != nil {
		return err
	}
	defer closeStore()

	metrics, err := startMetrics(cfg.MetricsListen, log)
	if err != nil {
		return err
	}
	defer metrics.close()

	store := profile.NewRedisStore(rdb, profile.Options{Buckets: cfg.Buckets})
	if err := server.RegisterStoreMetrics(metrics.meter, store.Stats); err != nil {
		return fmt.Errorf("metrics: %w", err)
	}
	auditLog := audit.New(rdb, audit.Options{Sample: cfg.AuditSample})
	auditDone := make(chan struct{})
	auditCtx, stopAudit := context.WithCancel(context.WithoutCancel(ctx))
	go func() { auditLog.Run(auditCtx); close(auditDone) }()
	defer func() { stopAudit(); <-auditDone }() // after the gRPC server stopped: flushes the last entries
	outbox := delivery.New(rdb, store.Buckets(), store.OutboxKey, delivery.Options{Visibility: cfg.Visibility, MaxDeliveries: cfg.MaxDeliveries})
	srv, err := server.New(store, rules, server.Config{
		Outbox:         outbox,
		MaxUnacked:     cfg.MaxUnacked,
		DefaultBudget:  cfg.DecisionBudget,
		MaxBudget:      cfg.DecisionBudgetMax,
		ReservationTTL: cfg.ReservationTTL,
		Logger:         log,
		Meter:          metrics.meter,
		Audit:          auditLog,
	})
	if err != nil {
		return err
	}
	g := srv.NewGRPCServer()

	lis, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	reported := func(changed bool, err error) {
		switch {
		case err != nil:
			log.Error("rules reload refused; the previous rules keep serving", "version", rules.Rules().Version(), "err", err)
		case changed:
			log.Info("rules reloaded", "version", rules.Rules().Version())
		default:
			log.Info("rules unchanged", "version", rules.Rules().Version())
		}
	}
	go rules.Watch(ctx, cfg.RulesReload, reported)
	go trimLoop(ctx, outbox, cfg, log)
	// SIGHUP reloads the rules file at once.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				reported(rules.Reload())
			}
		}
	}()

	serveErr := make(chan error, 1)
	go func() { serveErr <- g.Serve(lis) }()
	log.Info("nudged serving", "listen", lis.Addr().String())
	if ready != nil {
		ready(lis.Addr())
	}
	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "drain_timeout", cfg.DrainTimeout)
	srv.Shutdown(g, cfg.DrainTimeout)
	if err := <-serveErr; err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	log.Info("stopped")
	return nil
}

// trimLoop trims the outbox every TrimInterval until ctx ends (see
// delivery.Outbox.Trim: never an entry a group still needs).
func trimLoop(ctx context.Context, outbox *delivery.Outbox, cfg Config, log *slog.Logger) {
	t := time.NewTicker(cfg.TrimInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			n, err := outbox.Trim(ctx, cfg.OutboxRetention, time.Now())
			switch {
			case err != nil && ctx.Err() == nil:
				log.Warn("outbox trim failed; retrying at the next interval", "err", err)
			case n > 0:
				log.Info("outbox trimmed", "removed", n)
			}
		}
	}
}

func rulesSource(cfg Config) string {
	if cfg.RulesPath == "" {
		return examples.RulesName
	}
	return cfg.RulesPath
}

func loadRules(cfg Config) (*decision.Live, error) {
	if cfg.RulesPath != "" {
		return decision.LoadLive(cfg.RulesPath)
	}
	r, err := decision.Parse(examples.RulesName, examples.Rules)
	if err != nil {
		return nil, err
	}
	return decision.NewLive(r, examples.RulesName), nil
}

// RedisOptions returns the go-redis options nudge runs with for an address
// (host:port or a redis:// URL). Tests and tools that stand in for nudged
// use it too, so they cannot drift from what nudged does.
func RedisOptions(addr string) (*redis.Options, error) {
	opt := &redis.Options{Addr: addr}
	if strings.Contains(addr, "://") {
		var err error
		if opt, err = redis.ParseURL(addr); err != nil {
			return nil, fmt.Errorf("redis address: %w", err)
		}
	}
	// Without this go-redis ignores context deadlines for socket I/O and
	// waits ReadTimeout (3s) and its retries: a decision's budget must cut
	// a read short, and a cut connection is cheap to replace.
	opt.ContextTimeoutEnabled = true
	// nudge retries where it is safe and bounded (the store's transaction
	// loop); go-redis's own retries would spend a decision's whole budget
	// redialling a Redis that is down instead of degrading at once.
	opt.MaxRetries = -1
	// Every ActionService subscriber holds a connection for its blocking
	// XREADGROUP: leave room for them beside the ingest transactions.
	opt.PoolSize = max(opt.PoolSize, 64)
	return opt, nil
}

// openRedis connects to the configured Redis, or starts the embedded store.
func openRedis(ctx context.Context, cfg Config) (redis.UniversalClient, func(), error) {
	if cfg.RedisAddr == "" {
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
	opt, err := RedisOptions(cfg.RedisAddr)
	if err != nil {
		return nil, nil, err
	}
	rdb := redis.NewClient(opt)
	pingCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := rdb.Ping(pingCtx).Err(); err != nil {
		_ = rdb.Close()
		return nil, nil, fmt.Errorf("cannot reach Redis at %s: %w", opt.Addr, err)
	}
	cfg.Logger.Info("using Redis", "addr", opt.Addr)
	return rdb, func() { _ = rdb.Close() }, nil
}
