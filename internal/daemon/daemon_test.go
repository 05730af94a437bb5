package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/examples"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// TestRunLeavesNoGoroutine runs nudged with every actor at work (a rules
// file reloaded every 10 ms, the metrics listener, the outbox trimmer, the
// audit writer sampling every decision, a subscriber still streaming), and
// stops it: once Run returns, no goroutine it started is left.
func TestRunLeavesNoGoroutine(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	rules := filepath.Join(t.TempDir(), "rules.yaml")
	if err := os.WriteFile(rules, examples.Rules, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := Config{
		Listen:       "127.0.0.1:0",
		DrainTimeout: 200 * time.Millisecond,
		Metrics:      MetricsConfig{Listen: "127.0.0.1:0"},
		Rules:        RulesConfig{File: rules, Reload: 10 * time.Millisecond},
		Decision:     DecisionConfig{AuditSample: 1},
		Delivery:     DeliveryConfig{TrimInterval: 10 * time.Millisecond},
		Logger:       slog.New(slog.NewTextHandler(io.Discard, nil)),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	addrs := make(chan string, 1)
	done := make(chan error, 1)
	go func() { done <- Run(ctx, cfg, func(a net.Addr) { addrs <- a.String() }) }()
	var addr string
	select {
	case addr = <-addrs:
	case err := <-done:
		t.Fatalf("Run: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("nudged did not start within 30s")
	}

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	callCtx, stopCalls := context.WithTimeout(ctx, 30*time.Second)
	defer stopCalls()
	_, err = nudgev1.NewIngestServiceClient(conn).Publish(callCtx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{{
		EventId: "e1", UserId: "u1", Type: "view", Category: "phones", OccurredAt: timestamppb.Now(),
	}}})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if _, err := nudgev1.NewDecisionServiceClient(conn).GetDecision(callCtx, &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"}); err != nil {
		t.Fatalf("GetDecision: %v", err)
	}
	sub, err := nudgev1.NewActionServiceClient(conn).Subscribe(callCtx, &nudgev1.SubscribeRequest{Group: "g"})
	if err != nil {
		t.Fatalf("Subscribe: %v", err)
	}
	subEnded := make(chan error, 1)
	go func() {
		for {
			if _, err := sub.Recv(); err != nil {
				subEnded <- err
				return
			}
		}
	}()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Run did not return within 30s of its context ending")
	}
	<-subEnded // the server ended the stream
	if err := conn.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestActorsStopInReverseOrder: the actor added last stops first, and
// each is joined before the next stops; an actor that stops on its own
// stops the rest, and Run reports it.
func TestActorsStopInReverseOrder(t *testing.T) {
	var order []string
	a := actors{log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, name := range []string{"first", "second", "third"} {
		a.add(name, func(ctx context.Context) error {
			<-ctx.Done()
			order = append(order, name) // joined one at a time: no race
			return nil
		})
	}
	failed := make(chan struct{})
	a.add("failing", func(ctx context.Context) error {
		<-failed
		return io.ErrUnexpectedEOF
	})
	close(failed)
	err := a.run(context.Background())
	if err == nil || err.Error() != "failing: unexpected EOF" {
		t.Errorf("run = %v, want the failing actor's error", err)
	}
	if want := []string{"third", "second", "first"}; len(order) != 3 || order[0] != want[0] || order[1] != want[1] || order[2] != want[2] {
		t.Errorf("stopped in order %v, want %v", order, want)
	}
}
