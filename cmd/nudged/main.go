// Command nudged is the nudge server. Every flag can also be set with an
// environment variable NUDGE_<FLAG> (upper case, dashes as underscores);
// a flag on the command line wins.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/nudge-dm/nudge/internal/daemon"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "nudged:", err)
		os.Exit(1)
	}
}

func run() error {
	var cfg daemon.Config
	fs := flag.NewFlagSet("nudged", flag.ContinueOnError)
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:7070", "gRPC listen address")
	fs.StringVar(&cfg.RedisAddr, "redis-addr", "", "Redis host:port or redis:// URL; empty starts the embedded, NOT durable, development store")
	fs.StringVar(&cfg.RulesPath, "rules", "", "rules file (YAML); empty uses the bundled examples/rules.yaml")
	fs.DurationVar(&cfg.RulesReload, "rules-reload", 0, "how often to check the rules file for changes (default 5s; negative: never)")
	fs.StringVar(&cfg.MetricsListen, "metrics-listen", "", "HTTP address for /metrics (empty: off)")
	fs.IntVar(&cfg.Buckets, "buckets", 1024, "key buckets (hash tags); fixed for the life of a deployment")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 0, "graceful shutdown limit (default 10s)")
	fs.DurationVar(&cfg.DecisionBudget, "decision-budget", 0, "default GetDecision budget (default 10ms)")
	fs.DurationVar(&cfg.DecisionBudgetMax, "decision-budget-max", 0, "largest budget a request may ask for (default 1s)")
	fs.DurationVar(&cfg.ReservationTTL, "reservation-ttl", 0, "how long a reserved cap slot waits for its message_sent confirmation (default 5m)")
	fs.DurationVar(&cfg.Visibility, "visibility-timeout", 0, "an action not acknowledged within this is redelivered (default 30s)")
	fs.IntVar(&cfg.MaxDeliveries, "max-deliveries", 0, "deliveries of an action to a group before it goes to the dead-letter stream nudge:dead (default 5)")
	fs.IntVar(&cfg.MaxUnacked, "max-unacked", 0, "actions a subscriber may hold unacknowledged before delivery to it pauses (default 1000)")
	fs.DurationVar(&cfg.OutboxRetention, "outbox-retention", 0, "how long acknowledged actions stay in the outbox (default 24h)")
	fs.Float64Var(&cfg.AuditSample, "audit-sample", 0.01, "share of decisions logged to the audit stream nudge:audit (0 to 1)")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn, error")
	if err := envDefaults(fs); err != nil {
		return err
	}
	if err := fs.Parse(os.Args[1:]); err != nil {
		return err
	}
	if cfg.AuditSample < 0 || cfg.AuditSample > 1 {
		return fmt.Errorf("--audit-sample: %v is not between 0 and 1", cfg.AuditSample)
	}

	var level slog.Level
	if err := level.UnmarshalText([]byte(*logLevel)); err != nil {
		return fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: level}
	switch *logFormat {
	case "text":
		cfg.Logger = slog.New(slog.NewTextHandler(os.Stderr, opts))
	case "json":
		cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, opts))
	default:
		return fmt.Errorf("--log-format: %q is neither text nor json", *logFormat)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return daemon.Run(ctx, cfg, nil)
}

// envDefaults sets each flag from NUDGE_<FLAG> when that variable is set.
func envDefaults(fs *flag.FlagSet) error {
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		name := "NUDGE_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		if v, ok := os.LookupEnv(name); ok && err == nil {
			if e := f.Value.Set(v); e != nil {
				err = fmt.Errorf("%s=%q: %w", name, v, e)
			}
		}
	})
	return err
}
