package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os/signal"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/internal/daemon"
)

var errCountReached = errors.New("count reached")

// decisionsTail follows the audit stream in Redis.
func decisionsTail(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("nudgectl decisions tail", flag.ContinueOnError)
	fs.SetOutput(stderr)
	addr := fs.String("redis-addr", "127.0.0.1:6379", "Redis host:port or redis:// URL that nudged uses")
	stream := fs.String("stream", audit.DefaultStream, "audit stream key")
	all := fs.Bool("all", false, "start from the oldest entry kept, not only new ones")
	count := fs.Int("n", 0, "exit after this many entries (0: follow until interrupted)")
	asJSON := fs.Bool("json", false, "print one JSON object per entry")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	opt, err := daemon.RedisOptions(*addr)
	if err != nil {
		fmt.Fprintln(stderr, "nudgectl: --redis-addr:", err)
		return 2
	}
	rdb := redis.NewClient(opt)
	defer rdb.Close()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	from := "$"
	if *all {
		from = "0"
	}
	seen := 0
	err = audit.Tail(ctx, rdb, *stream, from, func(_ string, e audit.Entry) error {
		if *asJSON {
			b, _ := json.Marshal(e) // plain struct cannot fail
			fmt.Fprintln(stdout, string(b))
		} else {
			fmt.Fprintln(stdout, formatEntry(e))
		}
		seen++
		if *count > 0 && seen >= *count {
			return errCountReached
		}
		return nil
	})
	if err != nil && !errors.Is(err, errCountReached) {
		fmt.Fprintln(stderr, "nudgectl decisions tail:", err)
		return 1
	}
	return 0
}

func formatEntry(e audit.Entry) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %s user=%s channel=%s %s", e.At.Format("2006-01-02T15:04:05.000Z07:00"), e.DecisionID, e.UserID, e.Channel, strings.ToUpper(e.Verdict))
	if e.OfferID != "" {
		fmt.Fprintf(&b, " offer=%s", e.OfferID)
	}
	for _, flag := range []struct {
		on   bool
		name string
	}{{e.Degraded, "degraded"}, {e.Stale, "stale"}, {e.Control, "control"}} {
		if flag.on {
			b.WriteString(" " + flag.name)
		}
	}
	fmt.Fprintf(&b, " v%d rules=%s", e.ProfileVersion, e.RulesVersion)
	for _, r := range e.Reasons {
		fmt.Fprintf(&b, "\n    [%s] %s", r.RuleID, r.Message)
	}
	return b.String()
}
