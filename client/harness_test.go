package client_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/examples"
	"github.com/nudge-dm/nudge/internal/daemon"
	"github.com/nudge-dm/nudge/internal/daytime"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// exampleAddr is the nudge server the Example functions talk to: the
// bundled example rules on an in-process miniredis, started by TestMain
// (examples cannot start their own).
var exampleAddr string

// TestMain starts the examples' server and fails the run when goroutines
// outlive the tests (STYLE.md rule 7): every publisher, client and server a
// test starts must be stopped by it.
func TestMain(m *testing.M) {
	stop, err := startExampleServer()
	if err != nil {
		fmt.Fprintln(os.Stderr, "start the examples' server:", err)
		os.Exit(1)
	}
	code := m.Run()
	stop()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

func startExampleServer() (stop func(), err error) {
	mr, err := miniredis.Run()
	if err != nil {
		return nil, err
	}
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	rules, err := decision.Parse(examples.RulesName, daytime.Rules(time.Now())) // users in daytime: no quiet hours whatever the hour
	if err != nil {
		return nil, err
	}
	srv, err := server.New(redisstore.New(rdb, redisstore.Options{}), decision.NewLive(rules, examples.RulesName), server.Config{
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		DefaultBudget: time.Second, // miniredis answers are never late in examples
	})
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	g := srv.NewGRPCServer()
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	exampleAddr = lis.Addr().String()
	return func() {
		g.Stop()
		<-served
		_ = rdb.Close()
		mr.Close()
	}, nil
}

var exampleUsers atomic.Uint64

// exampleUser returns a user id not used before in this process, so that
// examples print the same output however often they run (-count).
func exampleUser(name string) string {
	return fmt.Sprintf("%s-%d", name, exampleUsers.Add(1))
}

// env is one nudge server on a fixed loopback port in front of a real
// redis-server, which can be stopped and restarted on the same port while
// Redis keeps its data.
type env struct {
	t     testing.TB
	addr  string
	redis *redistest.Server
	rdb   *redis.Client
	store *redisstore.Store
	rules *decision.Live

	srv    *server.Server
	g      *grpc.Server
	served chan struct{}
}

func newEnv(t testing.TB) *env {
	t.Helper()
	rs := redistest.Start(t)
	rdb := redis.NewClient(nudgedRedisOptions(t, rs.Addr))
	t.Cleanup(func() { _ = rdb.Close() })
	rules, err := decision.Parse(examples.RulesName, daytime.Rules(time.Now())) // users in daytime: no quiet hours whatever the hour
	if err != nil {
		t.Fatalf("bundled rules: %v", err)
	}
	e := &env{
		t: t, addr: freeAddr(t), redis: rs, rdb: rdb,
		store: redisstore.New(rdb, redisstore.Options{}),
		rules: decision.NewLive(rules, examples.RulesName),
	}
	e.start()
	t.Cleanup(e.stop)
	return e
}

func freeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("find a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().String()
}

// start serves on e.addr with a new server.Server and grpc.Server. The
// port was just released by stop: listening is retried for a bounded time.
func (e *env) start() {
	e.t.Helper()
	srv, err := server.New(e.store, e.rules, server.Config{
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		DefaultBudget: time.Second, // correctness here, not budgets
		Outbox: delivery.New(e.rdb, e.store.Layout(), delivery.Options{
			Visibility: 2 * time.Second, Block: 100 * time.Millisecond,
		}),
		MaxUnacked: 200,
	})
	if err != nil {
		e.t.Fatal(err)
	}
	var lis net.Listener
	deadline := time.Now().Add(10 * time.Second)
	for {
		lis, err = net.Listen("tcp", e.addr)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			e.t.Fatalf("listen again on %s: %v", e.addr, err)
		}
		time.Sleep(10 * time.Millisecond) // polling for the port, bounded above
	}
	e.srv, e.g, e.served = srv, srv.NewGRPCServer(), make(chan struct{})
	g, served := e.g, e.served
	go func() { _ = g.Serve(lis); close(served) }()
}

// stop kills the server at once: in-flight batches may be committed without
// their responses reaching the client.
func (e *env) stop() {
	if e.g == nil {
		return
	}
	e.g.Stop()
	<-e.served
	e.g = nil
}

// drain stops the server the way nudged does on SIGTERM.
func (e *env) drain() {
	e.srv.Shutdown(e.g, 10*time.Second)
	<-e.served
	e.g = nil
}

// dial returns a client of the env's server that reconnects quickly.
func (e *env) dial(t testing.TB) *client.Client {
	t.Helper()
	c, err := client.Dial(e.addr, client.WithDialOptions(grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 300 * time.Millisecond},
		MinConnectTimeout: 2 * time.Second,
	})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// totals returns the sum over users of their all-time count of typ.
func (e *env) totals(t testing.TB, users []string, typ string) uint64 {
	t.Helper()
	ctx := ctxT(t)
	var sum uint64
	pc := nudgev1.NewProfileServiceClient(e.dialRaw(t))
	for _, u := range users {
		resp, err := pc.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: u})
		if status.Code(err) == codes.NotFound {
			continue
		}
		if err != nil {
			t.Fatalf("GetProfile(%s): %v", u, err)
		}
		sum += resp.GetProfile().GetTotals()[typ]
	}
	return sum
}

func (e *env) dialRaw(t testing.TB) *grpc.ClientConn {
	t.Helper()
	return e.dial(t).Conn()
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// view is a valid view event of user in category, a minute ago.
func view(id, user, category string) *nudgev1.Event {
	return &nudgev1.Event{
		EventId:    id,
		UserId:     user,
		Type:       "view",
		Category:   category,
		OccurredAt: timestamppb.New(time.Now().Add(-time.Minute)),
	}
}

// daytimeTZ returns an IANA zone in which it is now about noon, so that a
// test deciding at wall-clock time is outside the example rules' quiet
// hours whenever it runs.
func daytimeTZ() string {
	off := 12 - time.Now().UTC().Hour() // in [-11, 12]
	switch {
	case off > 0:
		return fmt.Sprintf("Etc/GMT-%d", off) // Etc signs are inverted
	case off < 0:
		return fmt.Sprintf("Etc/GMT+%d", -off)
	}
	return "Etc/UTC"
}

func wantCode(t testing.TB, err error, code codes.Code) {
	t.Helper()
	if status.Code(err) != code {
		t.Fatalf("got %v, want code %s", err, code)
	}
}

func wantErr(t testing.TB, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("got %v, want %v", err, target)
	}
}

// nudgedRedisOptions are the go-redis options nudged runs with.
func nudgedRedisOptions(t testing.TB, addr string) *redis.Options {
	t.Helper()
	opt, err := daemon.RedisOptions(addr)
	if err != nil {
		t.Fatal(err)
	}
	return opt
}
