// Command nudged is the nudge server. Its settings come from a YAML file
// (--config or NUDGE_CONFIG; see deploy/nudged.yaml), overridden by
// NUDGE_<FLAG> environment variables (upper case, dashes as underscores),
// overridden by flags. --print-config shows the effective configuration;
// --version the binary's version.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/nudge-dm/nudge/internal/daemon"
	"github.com/nudge-dm/nudge/internal/version"
)

func main() {
	if err := run(); err != nil {
		if errors.Is(err, daemon.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "nudged:", err)
		os.Exit(1)
	}
}

func run() error {
	loaded, err := daemon.Load(os.Args[1:], os.LookupEnv, os.Stderr)
	if err != nil {
		return err
	}
	if loaded.Version {
		_, err := fmt.Println(version.String("nudged"))
		return err
	}
	cfg := loaded.Config
	if loaded.PrintConfig {
		out, err := cfg.Redacted()
		if err != nil {
			return err
		}
		_, err = os.Stdout.Write(out)
		return err
	}
	if cfg.Logger, err = cfg.Log.NewLogger(os.Stderr); err != nil {
		return err
	}
	daemon.ApplyRuntime(cfg.Runtime, os.LookupEnv, cfg.Logger)
	daemon.RouteRedisLogs(cfg.Logger)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return daemon.Run(ctx, cfg, nil)
}
