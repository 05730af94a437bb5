package client_test

import (
	"cmp"
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
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/examples"
	"github.com/nudge-dm/nudge/internal/daytime"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// The secrets of authEnv's tokens.
const (
	ingestSecret    = "ingest-secret"
	decideSecret    = "decide-secret" // no ingest role
	limitedSecret   = "limited-secret"
	subscribeSecret = "subscribe-secret"
	adminSecret     = "admin-secret"
)

// limitedRate is the events per second of the "limited" token, and
// limitedBurst its burst: limitedBurstSeconds of its rate.
const (
	limitedRate         = 100
	limitedBurstSeconds = 50
	limitedBurst        = limitedRate * limitedBurstSeconds
)

// authTokens are the tokens authEnv's server knows.
func authTokens() []server.Token {
	return []server.Token{
		{Name: "ingest", Secret: ingestSecret, Roles: []server.Role{server.RoleIngest}},
		{Name: "decide-only", Secret: decideSecret, Roles: []server.Role{server.RoleDecide}},
		{Name: "limited", Secret: limitedSecret, Roles: []server.Role{server.RoleIngest}, EventsPerSecond: limitedRate, BurstSeconds: limitedBurstSeconds},
		{Name: "subscriber", Secret: subscribeSecret, Roles: []server.Role{server.RoleSubscribe}, Groups: []string{"sms-sender"}},
		{Name: "admin", Secret: adminSecret, Roles: []server.Role{server.RoleAdmin}},
	}
}

// thawClock is a server clock that stands still at its start until thaw,
// then moves with real time. Frozen, a token's rate limiter refills
// nothing, so that a test knows exactly when the burst runs out however
// slowly the machine processes it.
type thawClock struct {
	start time.Time
	mu    sync.Mutex
	since time.Time // real time of thaw; zero while frozen
}

func (c *thawClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.since.IsZero() {
		return c.start
	}
	return c.start.Add(time.Since(c.since))
}

func (c *thawClock) thaw() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.since.IsZero() {
		c.since = time.Now()
	}
}

// authEnv is a nudge server that authenticates with authTokens, on a
// loopback port in front of a real redis-server, like env but with tokens
// and the clock.
type authEnv struct {
	addr  string
	clock *thawClock
}

func newAuthEnv(t *testing.T) *authEnv {
	t.Helper()
	rs := redistest.Start(t)
	rdb := redis.NewClient(nudgedRedisOptions(t, rs.Addr))
	t.Cleanup(func() { _ = rdb.Close() })
	rules, err := decision.Parse(examples.RulesName, daytime.Rules(time.Now())) // users in daytime: no quiet hours whatever the hour
	if err != nil {
		t.Fatalf("bundled rules: %v", err)
	}
	store := redisstore.New(rdb, redisstore.Options{})
	clock := &thawClock{start: time.Now()}
	srv, err := server.New(store, decision.NewLive(rules, examples.RulesName), server.Config{
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		DefaultBudget: time.Second,
		Outbox: delivery.New(rdb, store.Layout(), delivery.Options{
			Visibility: 2 * time.Second, Block: 100 * time.Millisecond,
		}),
		Tokens: authTokens(),
		Now:    clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := srv.NewGRPCServer()
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	t.Cleanup(func() {
		g.Stop()
		<-served
	})
	return &authEnv{addr: lis.Addr().String(), clock: clock}
}

// dial returns a client sending secret (none when empty) in plaintext,
// with extra dial options.
func (e *authEnv) dial(t *testing.T, secret string, extra ...grpc.DialOption) *client.Client {
	t.Helper()
	dopts := append([]grpc.DialOption{grpc.WithConnectParams(grpc.ConnectParams{
		Backoff:           backoff.Config{BaseDelay: 20 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 300 * time.Millisecond},
		MinConnectTimeout: 2 * time.Second,
	})}, extra...)
	opts := []client.Option{client.WithInsecure(), client.WithDialOptions(dopts...)}
	if secret != "" {
		opts = append(opts, client.WithToken(secret))
	}
	c, err := client.Dial(e.addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// viewTotal is the sum over users of their all-time view count, read
// with the admin token.
func (e *authEnv) viewTotal(t *testing.T, users []string) uint64 {
	t.Helper()
	pc := nudgev1.NewProfileServiceClient(e.dial(t, adminSecret).Conn())
	var sum uint64
	for _, u := range users {
		resp, err := pc.GetProfile(ctxT(t), &nudgev1.GetProfileRequest{UserId: u})
		if status.Code(err) == codes.NotFound {
			continue
		}
		if err != nil {
			t.Fatalf("GetProfile(%s): %v", u, err)
		}
		sum += resp.GetProfile().GetTotals()["view"]
	}
	return sum
}

// wantStatus fails unless err has code and its message contains msg.
func wantStatus(t *testing.T, what string, err error, code codes.Code, msg string) {
	t.Helper()
	if st := status.Convert(err); err == nil || st.Code() != code || !strings.Contains(st.Message(), msg) {
		t.Fatalf("%s: got %v, want code %s with %q", what, err, code, msg)
	}
}

// A publisher whose stream the server refuses for its credentials stops
// at once instead of retrying forever: every event it took goes to OnError
// with the server's status, and Publish, Flush and Close return it.
func TestPublisherRefusedCredentials(t *testing.T) {
	e := newAuthEnv(t)
	tests := []struct {
		name   string
		secret string
		code   codes.Code
		msg    string // in the status message
	}{
		{name: "no token", secret: "", code: codes.Unauthenticated, msg: "missing bearer token"},
		{name: "unknown token", secret: "not-a-configured-token", code: codes.Unauthenticated, msg: "unknown token"},
		{name: "token without the ingest role", secret: decideSecret, code: codes.PermissionDenied, msg: `lacks role "ingest"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Bounds every wait: a publisher that retries would hang
			// Flush until here.
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			var mu sync.Mutex
			var reported []error
			p := e.dial(t, tt.secret).NewPublisher(
				client.MaxBatch(7), // several batches in flight and one partial
				client.OnError(func(_ *nudgev1.Event, err error) {
					mu.Lock()
					defer mu.Unlock()
					reported = append(reported, err)
				}))
			const events = 50
			accepted := 0
			var pubErr error
			for i := 0; i < events && pubErr == nil; i++ {
				// The publisher may stop while this loop runs: Publish
				// then refuses the rest itself.
				if pubErr = p.Publish(ctx, view(fmt.Sprintf("%s-%d", tt.name, i), "refused-user", "phones")); pubErr == nil {
					accepted++
				}
			}
			if pubErr != nil {
				wantStatus(t, "Publish", pubErr, tt.code, tt.msg)
			}
			wantStatus(t, "Flush", p.Flush(ctx), tt.code, tt.msg)
			wantStatus(t, "Publish after the refusal", p.Publish(ctx, view(tt.name+"-late", "refused-user", "phones")), tt.code, tt.msg)

			st := p.Stats()
			if st.Published != uint64(accepted) || st.Failed != uint64(accepted) || st.Acked != 0 {
				t.Errorf("stats %+v: want %d published and failed, none acked", st, accepted)
			}
			mu.Lock()
			if len(reported) != accepted {
				t.Errorf("OnError called %d times, want once per accepted event (%d)", len(reported), accepted)
			}
			for _, err := range reported {
				wantStatus(t, "OnError", err, tt.code, tt.msg)
			}
			mu.Unlock()
			if st.Reconnects != 0 {
				t.Errorf("%d reconnects after a refusal of the credentials, want none", st.Reconnects)
			}
			wantStatus(t, "Close", p.Close(ctx), tt.code, tt.msg)
			wantErr(t, p.Close(ctx), client.ErrClosed)
		})
	}
}

// streamLog records, in order, the IngestService streams a client opens
// and the RetryInfo delays of those the server ends with
// ResourceExhausted.
type streamLog struct {
	onRefusal func()

	mu      sync.Mutex
	entries []streamEntry
}

type streamEntry struct {
	at      time.Time
	refused bool          // false: a stream opened
	delay   time.Duration // the RetryInfo delay of a refusal
}

func (l *streamLog) add(e streamEntry) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.entries = append(l.entries, e)
}

// interceptor is the client's stream interceptor.
func (l *streamLog) interceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	if method != nudgev1.IngestService_Stream_FullMethodName {
		return streamer(ctx, desc, cc, method, opts...)
	}
	l.add(streamEntry{at: time.Now()})
	cs, err := streamer(ctx, desc, cc, method, opts...)
	if err != nil {
		return nil, err
	}
	return &loggedStream{ClientStream: cs, log: l}, nil
}

type loggedStream struct {
	grpc.ClientStream
	log  *streamLog
	once sync.Once
}

func (s *loggedStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if status.Code(err) != codes.ResourceExhausted {
		return err
	}
	// Recorded before the publisher sees the error, so before it plans its
	// next stream.
	at := time.Now()
	s.once.Do(func() {
		e := streamEntry{at: at, refused: true, delay: -1}
		for _, d := range status.Convert(err).Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok {
				e.delay = ri.GetRetryDelay().AsDuration()
			}
		}
		s.log.add(e)
		s.log.onRefusal()
	})
	return err
}

// A publisher over its token's events rate waits at least the delay the
// server's RetryInfo asks for before it opens its next stream, and gets
// every event applied exactly once.
func TestPublisherWaitsOutRateLimit(t *testing.T) {
	e := newAuthEnv(t)
	// The server's clock stands still until the first refusal: the burst
	// (limitedBurst events) passes and nothing refills however long the
	// machine takes over it; then the clock runs, at limitedRate events a
	// second.
	streams := &streamLog{onRefusal: e.clock.thaw}
	c := e.dial(t, limitedSecret, grpc.WithStreamInterceptor(streams.interceptor))
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	defer cancel()

	// Full batches only (no linger): the burst takes exactly
	// limitedBurst/batchSize batches, then every extra batch costs
	// batchSize/limitedRate = 500ms. A publisher retrying on its own
	// backoff (from 50ms) would be refused several times per batch.
	const (
		batchSize    = 50
		extraBatches = 4
		events       = limitedBurst + extraBatches*batchSize
	)
	var failed atomic.Uint64
	p := c.NewPublisher(client.MaxBatch(batchSize), client.Linger(time.Hour),
		client.OnError(func(*nudgev1.Event, error) { failed.Add(1) }))
	users := make([]string, 0, events/runLength)
	for i := range events {
		u := fmt.Sprintf("limited-u%d", i/runLength)
		if i%runLength == 0 {
			users = append(users, u)
		}
		if err := p.Publish(ctx, view(fmt.Sprintf("limited-%d", i), u, "phones")); err != nil {
			t.Fatalf("publish event %d: %v (stats %+v)", i, err, p.Stats())
		}
	}
	if err := p.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v (stats %+v)", err, p.Stats())
	}
	st := p.Stats()
	if err := p.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	t.Logf("stats: %+v", st)

	if st.Published != events || st.Acked != events || st.Applied != events || st.Failed != 0 || failed.Load() != 0 {
		t.Errorf("stats %+v (OnError %d times): want all %d events applied", st, failed.Load(), events)
	}
	if got := e.viewTotal(t, users); got != events {
		t.Errorf("sum of view totals = %d, want exactly %d", got, events)
	}

	streams.mu.Lock()
	defer streams.mu.Unlock()
	refusals := 0
	for i, en := range streams.entries {
		if !en.refused {
			continue
		}
		refusals++
		if en.delay < 0 {
			t.Errorf("refusal %d carries no RetryInfo", refusals)
			continue
		}
		// Timers never fire early, so this lower bound cannot flake on
		// a slow machine.
		for _, next := range streams.entries[i+1:] {
			if !next.refused {
				if waited := next.at.Sub(en.at); waited < en.delay {
					t.Errorf("refusal %d asked to wait %v; the next stream opened after %v", refusals, en.delay, waited)
				}
				break
			}
		}
	}
	// About one refusal per batch over the burst.
	if refusals == 0 || refusals >= 10 {
		t.Errorf("%d streams refused over the rate limit, want 1 to 9 (about %d)", refusals, extraBatches)
	}
	if st.Reconnects >= 10 {
		t.Errorf("%d reconnects, want fewer than 10", st.Reconnects)
	}
}

// Subscribe with credentials the server refuses returns the status at
// once instead of reconnecting forever.
func TestSubscribeRefusedCredentials(t *testing.T) {
	e := newAuthEnv(t)
	tests := []struct {
		name   string
		secret string
		group  string // default sms-sender, the subscribe token's group
		code   codes.Code
		msg    string
	}{
		{name: "unknown token", secret: "not-a-configured-token", code: codes.Unauthenticated, msg: "unknown token"},
		{name: "no token", secret: "", code: codes.Unauthenticated, msg: "missing bearer token"},
		{name: "token without the subscribe role", secret: ingestSecret, code: codes.PermissionDenied, msg: `lacks role "subscribe"`},
		{name: "a group the token does not name", secret: subscribeSecret, group: "push-sender", code: codes.PermissionDenied,
			msg: `token "subscriber" may not use consumer group "push-sender"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			var retried atomic.Int64
			group := cmp.Or(tt.group, "sms-sender")
			err := e.dial(t, tt.secret).Subscribe(ctx, group,
				func(context.Context, *nudgev1.Action, uint32) error { return nil },
				client.OnSubscribeError(func(error) { retried.Add(1) }))
			if ctx.Err() != nil {
				t.Fatalf("Subscribe returned %v only when its context ended", err)
			}
			wantStatus(t, "Subscribe", err, tt.code, tt.msg)
			if n := retried.Load(); n != 0 {
				t.Errorf("Subscribe retried %d times before returning", n)
			}
		})
	}
	t.Run("subscribe token", func(t *testing.T) {
		// The control: the same server lets the right token subscribe.
		ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
		defer cancel()
		err := e.dial(t, subscribeSecret).Subscribe(ctx, "sms-sender",
			func(context.Context, *nudgev1.Action, uint32) error { return nil })
		if err != nil { // nil: it ran until its context ended
			t.Fatalf("Subscribe with the subscribe token: %v", err)
		}
	})
}
