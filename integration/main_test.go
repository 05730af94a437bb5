package integration

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"testing"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// subscriberEnv, when set (to "addr group consumer"), makes the test
// binary a subscriber process instead of running the tests: chaos
// scenario 8 kills such processes with SIGKILL.
const subscriberEnv = "NUDGE_CHAOS_SUBSCRIBER"

// builtDir holds the commands the tests build (buildCommand).
var builtDir string

func TestMain(m *testing.M) {
	if spec := os.Getenv(subscriberEnv); spec != "" {
		os.Exit(runSubscriber(spec))
	}
	dir, err := os.MkdirTemp("", "nudge-integration-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	builtDir = dir
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

// runSubscriber is one member of a consumer group in a process of its
// own: it writes "delivered <action id> <delivery count>" to stdout for
// every action before its handler returns (the Go client then
// acknowledges it, in the background), until SIGTERM or SIGKILL.
func runSubscriber(spec string) int {
	var addr, group, consumer string
	if _, err := fmt.Sscan(spec, &addr, &group, &consumer); err != nil {
		fmt.Fprintf(os.Stderr, "%s=%q: %v\n", subscriberEnv, spec, err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM)
	defer stop()
	c, err := client.Dial(addr, client.WithInsecure())
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer c.Close()
	out := bufio.NewWriter(os.Stdout)
	err = c.Subscribe(ctx, group, func(_ context.Context, a *nudgev1.Action, count uint32) error {
		fmt.Fprintf(out, "delivered %s %d\n", a.GetActionId(), count)
		return out.Flush()
	}, client.Consumer(consumer))
	if err != nil && ctx.Err() == nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}
