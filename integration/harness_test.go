package integration

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/examples"
	"github.com/nudge-dm/nudge/internal/daemon"
	"github.com/nudge-dm/nudge/internal/daytime"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// env is one nudge server on a loopback port in front of its own
// redis-server, or of its own Redis Cluster (see forBackends).
type env struct {
	redis   *redistest.Server  // nil on a cluster
	cluster *redistest.Cluster // nil on a standalone Redis
	rdb     redis.UniversalClient
	store   *redisstore.Store
	conn    *grpc.ClientConn
	ingest  nudgev1.IngestServiceClient
	decide  nudgev1.DecisionServiceClient
	prof    nudgev1.ProfileServiceClient
	acts    nudgev1.ActionServiceClient
	// rules is the rules file the server runs (nil: the bundled
	// examples); srv is the server, for tests that run its actors
	// (RunTimers) themselves.
	rules []byte
	srv   *server.Server
}

func newEnv(t testing.TB, opt redisstore.Options) *env {
	t.Helper()
	return startServer(t, &env{redis: redistest.Start(t)}, opt, server.Config{})
}

// newEnvConfig is newEnv with server settings (zero fields: the test
// defaults below).
func newEnvConfig(t testing.TB, opt redisstore.Options, cfg server.Config) *env {
	t.Helper()
	return startServer(t, &env{redis: redistest.Start(t)}, opt, cfg)
}

// newClusterEnv is newEnv on a 3-master Redis Cluster.
func newClusterEnv(t testing.TB, opt redisstore.Options) *env {
	t.Helper()
	return startServer(t, &env{cluster: redistest.StartCluster(t, 3)}, opt, server.Config{})
}

// backend is a Redis deployment the pipeline tests run against.
type backend struct {
	name   string
	newEnv func(t testing.TB, opt redisstore.Options) *env
}

// forBackends runs test against a standalone redis-server and against a
// 3-master Redis Cluster, as subtests: the pipeline must behave the same
// on both.
func forBackends(t *testing.T, test func(t *testing.T, b backend)) {
	for _, b := range []backend{{"standalone", newEnv}, {"cluster", newClusterEnv}} {
		t.Run(b.name, func(t *testing.T) { test(t, b) })
	}
}

// addServer starts another nudge server, with its own Redis connections, on
// the same Redis: what a second replica behind a load balancer is.
func (e *env) addServer(t testing.TB, opt redisstore.Options) *env {
	t.Helper()
	return startServer(t, &env{redis: e.redis, cluster: e.cluster, rules: e.rules}, opt, server.Config{})
}

// redisClient connects to the env's Redis as nudged does.
func (e *env) redisClient(t testing.TB) redis.UniversalClient {
	t.Helper()
	if e.cluster != nil {
		cfg := daemon.Defaults().Redis
		cfg.Cluster = e.cluster.Addrs()
		o, err := cfg.ClusterOptions()
		if err != nil {
			t.Fatal(err)
		}
		return redis.NewClusterClient(o)
	}
	return redis.NewClient(nudgedRedisOptions(t, e.redis.Addr))
}

// keys lists every key of the env's Redis, on every master of a cluster.
func (e *env) keys(t testing.TB) []string {
	t.Helper()
	c, ok := e.rdb.(*redis.ClusterClient)
	if !ok {
		keys, err := e.rdb.Keys(context.Background(), "*").Result()
		if err != nil {
			t.Fatalf("KEYS: %v", err)
		}
		return keys
	}
	var mu sync.Mutex
	var keys []string
	err := c.ForEachMaster(context.Background(), func(ctx context.Context, n *redis.Client) error {
		k, err := n.Keys(ctx, "*").Result()
		mu.Lock()
		keys = append(keys, k...)
		mu.Unlock()
		return err
	})
	if err != nil {
		t.Fatalf("KEYS: %v", err)
	}
	return keys
}

func startServer(t testing.TB, e *env, opt redisstore.Options, cfg server.Config) *env {
	t.Helper()
	rdb := e.redisClient(t)
	t.Cleanup(func() { _ = rdb.Close() })
	store := redisstore.New(rdb, opt)
	// The example rules, their users in daytime whatever the hour.
	src, name := daytime.Rules(time.Now()), examples.RulesName
	if e.rules != nil {
		src, name = e.rules, "test-rules.yaml"
	}
	rules, err := decision.Parse(name, src)
	if err != nil {
		t.Fatalf("rules %s: %v", name, err)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Outbox == nil {
		// Short timeouts, so redelivery happens within a test; a small
		// unacked window, so that a member acking one call at a time
		// (about 2 ms each under -race) never holds an action past the
		// visibility timeout.
		cfg.Outbox = delivery.New(rdb, store.Layout(), delivery.Options{
			Visibility: 5 * time.Second, MaxDeliveries: 3, Block: 100 * time.Millisecond,
		})
	}
	if cfg.MaxUnacked == 0 {
		cfg.MaxUnacked = 200
	}
	if cfg.DefaultBudget == 0 {
		cfg.DefaultBudget = time.Second // correctness here; budgets have their own tests
	}
	srv, err := server.New(store, decision.NewLive(rules, name), cfg)
	if err != nil {
		t.Fatal(err)
	}
	g := srv.NewGRPCServer()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = g.Serve(lis) }()
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return &env{
		redis: e.redis, cluster: e.cluster, rdb: rdb, store: store, conn: conn, rules: e.rules, srv: srv,
		ingest: nudgev1.NewIngestServiceClient(conn),
		decide: nudgev1.NewDecisionServiceClient(conn),
		prof:   nudgev1.NewProfileServiceClient(conn),
		acts:   nudgev1.NewActionServiceClient(conn),
	}
}

func ctxT(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

var eventSeq atomic.Uint64

// ev builds a valid event of a user that happened ago before now.
func ev(user, typ, category string, ago time.Duration) *nudgev1.Event {
	return &nudgev1.Event{
		EventId:    fmt.Sprintf("e-%d", eventSeq.Add(1)),
		UserId:     user,
		Type:       typ,
		Category:   category,
		OccurredAt: timestamppb.New(time.Now().Add(-ago)),
	}
}

func (e *env) publish(t *testing.T, events ...*nudgev1.Event) *nudgev1.PublishResponse {
	t.Helper()
	resp, err := e.ingest.Publish(ctxT(t), &nudgev1.PublishRequest{Events: events})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if len(resp.Results) != len(events) {
		t.Fatalf("Publish: %d results for %d events", len(resp.Results), len(events))
	}
	return resp
}

func (e *env) profile(t *testing.T, user string) *nudgev1.Profile {
	t.Helper()
	resp, err := e.prof.GetProfile(ctxT(t), &nudgev1.GetProfileRequest{UserId: user})
	if err != nil {
		t.Fatalf("GetProfile(%s): %v", user, err)
	}
	return resp.Profile
}

// count returns a windowed count from a profile.
func count(t *testing.T, p *nudgev1.Profile, typ, category string, window time.Duration) uint64 {
	t.Helper()
	for _, c := range p.Counts {
		if c.Type == typ && c.Category == category && c.Window.AsDuration() == window {
			return c.Count
		}
	}
	return 0
}

func wantStatus(t *testing.T, r *nudgev1.EventResult, want nudgev1.EventStatus) {
	t.Helper()
	if r.Status != want {
		t.Errorf("event %s: status %s, want %s (reason %q)", r.EventId, r.Status, want, r.Reason)
	}
}

func wantCode(t *testing.T, err error, want codes.Code, msgPart string) {
	t.Helper()
	st, _ := status.FromError(err)
	if st.Code() != want {
		t.Fatalf("got %v, want code %s", err, want)
	}
	if !strings.Contains(st.Message(), msgPart) {
		t.Errorf("message %q does not mention %q", st.Message(), msgPart)
	}
}

// outbox returns the decoded outbox entries of a user's bucket.
func (e *env) outbox(t *testing.T, user string) []profile.Action {
	t.Helper()
	msgs, err := e.rdb.XRange(ctxT(t), e.store.Layout().OutboxKey(e.store.Layout().Bucket(user)), "-", "+").Result()
	if err != nil {
		t.Fatalf("XRANGE: %v", err)
	}
	var out []profile.Action
	for _, m := range msgs {
		a, err := redisstore.DecodeAction(m.Values)
		if err != nil {
			t.Fatalf("outbox entry %s: %v", m.ID, err)
		}
		out = append(out, a)
	}
	return out
}

// daytimeTZ returns an IANA zone in which it is now about noon, so that a
// test deciding at wall-clock time is outside the example rules' quiet
// hours whenever it runs.
func daytimeTZ() string { return daytime.Zone(time.Now()) }

// inDaytime gives the event's user a time zone where it is now daytime.
func inDaytime(e *nudgev1.Event) *nudgev1.Event {
	e.Attributes = map[string]string{"tz": daytimeTZ()}
	return e
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
