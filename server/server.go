package server

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"

	"buf.build/go/protovalidate"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/sync/semaphore"
	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/reflection"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/profile"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// The profile store, narrowed to what each service uses. A
// *redisstore.Store is all of them. A decision's answer does not wait for
// a read past its budget (budget.go), but a read that does not return by
// its context's deadline holds one of Config.MaxPendingReads: Load,
// LoadMany and Update should honour it (a redisstore.Store does when its
// go-redis client has ContextTimeoutEnabled, as nudged's has).
type (
	// EventStore applies events: IngestService.
	EventStore interface {
		Apply(ctx context.Context, events []profile.Event, step profile.Step) profile.BatchOutcome
	}
	// DecisionStore reads profiles and takes reservations: DecisionService.
	// Peek answers from memory without I/O when it can (a near-cache kept
	// coherent with the store), found false otherwise; Load and LoadMany
	// read the store (Load may share a read with concurrent callers, but
	// not one of a profile older than minVersion); ReadMany is LoadMany for
	// batch readers (GetFeatures) whose users must not fill that memory
	// (the decisions' hot set). Profiles returned must not be modified.
	DecisionStore interface {
		Peek(userID string, minVersion uint64) (p *profile.Profile, found bool, err error)
		Load(ctx context.Context, userID string, minVersion uint64) (*profile.Profile, error)
		LoadMany(ctx context.Context, userIDs []string) ([]*profile.Profile, []error)
		ReadMany(ctx context.Context, userIDs []string) ([]*profile.Profile, []error)
		Update(ctx context.Context, userID string, fn func(p *profile.Profile, now time.Time) bool) (uint64, error)
	}
	// ProfileStore shows and erases profiles: ProfileService.
	ProfileStore interface {
		Get(ctx context.Context, userID string) (*profile.Profile, error)
		Delete(ctx context.Context, userID string) (profile.DeleteResult, error)
	}
	// Store is every service's store.
	Store interface {
		EventStore
		DecisionStore
		ProfileStore
	}
)

// RuleSource gives the rules in force. Rules may change between calls (hot
// reload); each call uses one snapshot.
type RuleSource interface {
	Rules() *decision.Rules
	// LoadedAt and Source describe the rules in force, for operators.
	LoadedAt() time.Time
	Source() string
	// Refused describes the last rules file refused on reload, if the file
	// on disk is not the one in force.
	Refused() (decision.Refusal, bool)
}

var _ RuleSource = (*decision.Live)(nil)

// AuditLog receives sampled decisions, without blocking.
type AuditLog interface {
	Sampled(decisionID string) bool
	Record(e audit.Entry) bool
}

var _ AuditLog = (*audit.Log)(nil)

// Config configures a Server. The zero value of a field means its default.
type Config struct {
	// Limits bound profiles and the event times accepted. Defaults as in
	// profile.Limits.
	Limits profile.Limits
	// DefaultBudget is GetDecision's budget when the request has none.
	// Default 10ms.
	DefaultBudget time.Duration
	// MaxBudget caps the budget a request may ask for. Default 1s.
	MaxBudget time.Duration
	// MaxInFlight bounds the batches of one ingest stream processed at the
	// same time; the server stops reading the stream while it is reached.
	// Default 8.
	MaxInFlight int
	// MaxInFlightEvents bounds the events being applied at once across
	// all calls (Stream batches and Publish): a batch waits for room, in
	// arrival order, and its stream is not read meanwhile, so the server's
	// memory does not grow with the number of streams. Default 32768.
	MaxInFlightEvents int
	// ReservationTTL is how long a reservation (GetDecision with reserve)
	// holds its cap slot unless a message_sent event confirms it. Default
	// 5m.
	ReservationTTL time.Duration
	// MaxPendingReads bounds the decision reads waiting on the store at
	// once. Past it, decisions degrade at once. Default 1024.
	MaxPendingReads int
	// BreakerFailures is how many decision reads in a row must fail (the
	// store unreachable, or a read past the deadline of the default
	// budget), over at least the default budget's read share, for reads to
	// stop for BreakerCooldown: decisions then degrade at once, then one
	// read probes the store. Default 3; negative never stops reads.
	BreakerFailures int
	// BreakerCooldown is how long reads stop once BreakerFailures failed,
	// and after each failed probe. Default 50ms.
	BreakerCooldown time.Duration
	// Now is the processing clock. Default time.Now.
	Now func() time.Time
	// Logger receives the server's logs. Default slog.Default().
	Logger *slog.Logger
	// Meter receives the server's metrics. Default: none (no-op).
	Meter metric.Meter
	// Audit receives sampled decisions. Default: none.
	Audit AuditLog
	// DecisionLog reads back the decisions Audit logs
	// (AdminService.TailDecisions); an *audit.Log is both. Default: none
	// (TailDecisions answers UNIMPLEMENTED).
	DecisionLog DecisionLog
	// Outbox delivers actions to ActionService subscribers. Default: none
	// (ActionService answers UNIMPLEMENTED).
	Outbox Outbox
	// DeadLetters lists the actions the outbox dead-lettered
	// (AdminService.ListDeadActions); a *delivery.Outbox is both.
	// Default: none (ListDeadActions answers UNIMPLEMENTED).
	DeadLetters DeadLetters
	// MaxUnacked bounds the actions a subscriber holds unacknowledged;
	// delivery pauses at it. Keep it below what a subscriber handles within
	// the visibility timeout. Default 1000.
	MaxUnacked int
	// Tokens are the bearer tokens callers authenticate with, each with its
	// roles, consumer groups and rate limits (see Token). New refuses a
	// token with an empty name or secret, an unknown role, a group no
	// request could name, or a name or secret another token has. Default:
	// none, and then calls are not authenticated.
	Tokens []Token
	// LogUserIDs writes user ids in clear in the server's logs. Default
	// false: a log line names a user by a keyed hash of the id, stable
	// within one process only.
	LogUserIDs bool
	// MaxRecvMsgBytes bounds a received message; a larger one fails with
	// RESOURCE_EXHAUSTED. Default 16 MiB (a batch of 5000 events with
	// attributes takes a few MiB).
	MaxRecvMsgBytes int
	// MaxRecvBytesInFlight bounds the bytes that batch requests (Publish,
	// BatchGetDecisions) being received may take at once (see
	// admission.go): a batch call holds MaxRecvMsgBytes of it while its
	// request is read, and one token at most half of it. A call that does
	// not fit waits for room, in arrival order, up to its deadline.
	// Default 128 MiB.
	MaxRecvBytesInFlight int
	// MaxStreamsPerConn bounds the calls open at once on one connection
	// (HTTP/2 MAX_CONCURRENT_STREAMS; a client waits for room). Each may
	// have a flow-control window (1 MiB) of request bytes unread. Default
	// 100.
	MaxStreamsPerConn int
	// StreamWorkers is the goroutines kept to serve calls (grpc's
	// NumStreamWorkers), whose grown stacks calls reuse. Default 16;
	// negative: a new goroutine per call.
	StreamWorkers int
	// MaxConnectionIdle closes a connection that has had no call for this
	// long (the client reconnects when it next calls). Default 15m.
	MaxConnectionIdle time.Duration
	// KeepaliveTime is how long a connection may be silent before the
	// server pings it, and KeepaliveTimeout how long it then waits for the
	// answer before closing it: a peer that vanished does not hold its
	// calls open. Defaults 2m and 20s.
	KeepaliveTime, KeepaliveTimeout time.Duration
	// KeepaliveMinTime is the shortest interval at which a client may
	// ping; a client pinging more often is disconnected (GOAWAY
	// too_many_pings). Default 10s (grpc-go's clients ping no more than
	// that unless told to).
	KeepaliveMinTime time.Duration
	// Measures records the exposures decisions make and reads the
	// campaign counters (reports, the offers' sampler, the campaign
	// metrics); RunMeasures does the background part. Default: none
	// (reports answer UNIMPLEMENTED, thompson offers win in file order,
	// decisions' control exposures are not recorded).
	Measures MeasureStore
	// ExposureQueue bounds the decisions' control exposures waiting to be
	// written by RunMeasures; past it they are lost and counted
	// (nudge.exposures.lost). Default 10,000.
	ExposureQueue int
	// StreamIdle ends an ingest stream that has sent no batch for this
	// long and has none in work, with UNAVAILABLE (the Go publisher opens
	// a new one when it next publishes). Default 10m.
	StreamIdle time.Duration
}

// DefaultConfig returns the settings a Server runs with when told
// nothing (Limits: profile.DefaultLimits; no clock, logger, meter, audit,
// outbox or tokens: their defaults are in Config).
func DefaultConfig() Config {
	return Config{
		Limits:            profile.DefaultLimits(),
		DefaultBudget:     10 * time.Millisecond,
		MaxBudget:         time.Second,
		MaxInFlight:       8,
		MaxInFlightEvents: 32768,
		ReservationTTL:    5 * time.Minute,
		MaxPendingReads:   1024,
		BreakerFailures:   3,
		BreakerCooldown:   50 * time.Millisecond,
		MaxUnacked:        1000,
		MaxRecvMsgBytes:   16 << 20,
		// Eight maximal batches.
		MaxRecvBytesInFlight: 128 << 20,
		MaxStreamsPerConn:    100,
		StreamWorkers:        16,
		MaxConnectionIdle:    15 * time.Minute,
		KeepaliveTime:        2 * time.Minute,
		KeepaliveTimeout:     20 * time.Second,
		KeepaliveMinTime:     10 * time.Second,
		StreamIdle:           10 * time.Minute,
		ExposureQueue:        10000,
	}
}

func (c Config) withDefaults() Config {
	d := DefaultConfig()
	c.Limits = c.Limits.WithDefaults()
	positive(&c.DefaultBudget, d.DefaultBudget)
	positive(&c.MaxBudget, d.MaxBudget)
	c.DefaultBudget = min(c.DefaultBudget, c.MaxBudget)
	positive(&c.MaxInFlight, d.MaxInFlight)
	positive(&c.MaxInFlightEvents, d.MaxInFlightEvents)
	positive(&c.MaxUnacked, d.MaxUnacked)
	positive(&c.ReservationTTL, d.ReservationTTL)
	positive(&c.MaxPendingReads, d.MaxPendingReads)
	if c.BreakerFailures == 0 {
		c.BreakerFailures = d.BreakerFailures
	}
	positive(&c.BreakerCooldown, d.BreakerCooldown)
	positive(&c.MaxRecvMsgBytes, d.MaxRecvMsgBytes)
	positive(&c.MaxRecvBytesInFlight, d.MaxRecvBytesInFlight)
	positive(&c.MaxStreamsPerConn, d.MaxStreamsPerConn)
	if c.StreamWorkers == 0 {
		c.StreamWorkers = d.StreamWorkers
	}
	positive(&c.MaxConnectionIdle, d.MaxConnectionIdle)
	positive(&c.KeepaliveTime, d.KeepaliveTime)
	positive(&c.KeepaliveTimeout, d.KeepaliveTimeout)
	positive(&c.KeepaliveMinTime, d.KeepaliveMinTime)
	positive(&c.StreamIdle, d.StreamIdle)
	positive(&c.ExposureQueue, d.ExposureQueue)
	// A bound below one batch would refuse every batch.
	c.MaxRecvBytesInFlight = max(c.MaxRecvBytesInFlight, 2*c.MaxRecvMsgBytes)
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c
}

// positive sets *p to d when it is not positive.
func positive[T int | time.Duration](p *T, d T) {
	if *p <= 0 {
		*p = d
	}
}

// Server implements nudge's gRPC services on a Store and a RuleSource. It
// holds no state of its own beyond configuration: any number of servers can
// share one Redis.
type Server struct {
	nudgev1.UnimplementedIngestServiceServer
	nudgev1.UnimplementedDecisionServiceServer
	nudgev1.UnimplementedProfileServiceServer
	nudgev1.UnimplementedAdminServiceServer
	nudgev1.UnimplementedActionServiceServer

	ingest    EventStore
	decisions DecisionStore
	profiles  ProfileStore
	rules     RuleSource
	cfg       Config
	validator protovalidate.Validator
	health    *health.Server
	metrics   *instruments
	// tokens are the principals by the digest of their secret; nil when
	// calls are not authenticated.
	tokens map[secretDigest]*principal
	// userKey keys the hash standing for user ids in logs (logUser).
	userKey []byte

	pendingReads chan struct{}       // semaphore, see Config.MaxPendingReads
	reads        *breaker            // see Config.BreakerFailures
	defaultRead  time.Duration       // the read's share of Config.DefaultBudget
	admit        *semaphore.Weighted // events in work, see Config.MaxInFlightEvents
	recv         *semaphore.Weighted // batch requests being received, see Config.MaxRecvBytesInFlight
	plays        *semaphore.Weighted // TestRules calls at work: one (playground.go)

	meas *measurement // measure.go

	drainOnce sync.Once
	draining  chan struct{}
}

// New returns a server.
func New(store Store, rules RuleSource, cfg Config) (*Server, error) {
	tokens, err := compileTokens(cfg.Tokens)
	if err != nil {
		return nil, err
	}
	cfg.Tokens = nil // only the digests are kept
	v, err := protovalidate.New()
	if err != nil {
		return nil, fmt.Errorf("server: build validator: %w", err)
	}
	in, err := newInstruments(cfg.Meter)
	if err != nil {
		return nil, err
	}
	cfg = cfg.withDefaults()
	for _, p := range tokens {
		p.recv = semaphore.NewWeighted(int64(cfg.MaxRecvBytesInFlight) / 2)
	}
	s := &Server{
		plays:        semaphore.NewWeighted(1),
		ingest:       store,
		decisions:    store,
		profiles:     store,
		rules:        rules,
		cfg:          cfg,
		validator:    v,
		health:       health.NewServer(),
		metrics:      in,
		tokens:       tokens,
		userKey:      newUserKey(),
		pendingReads: make(chan struct{}, cfg.MaxPendingReads),
		reads:        &breaker{failures: cfg.BreakerFailures, minStreak: readShare(cfg.DefaultBudget), cooldown: cfg.BreakerCooldown},
		defaultRead:  readShare(cfg.DefaultBudget),
		admit:        semaphore.NewWeighted(int64(cfg.MaxInFlightEvents)),
		recv:         semaphore.NewWeighted(int64(cfg.MaxRecvBytesInFlight)),
		meas:         newMeasurement(cfg.ExposureQueue),
		draining:     make(chan struct{}),
	}
	s.meas.running.Store(cfg.Measures != nil)
	if cfg.Meter != nil {
		if err := s.registerCampaignMetrics(cfg.Meter); err != nil {
			return nil, fmt.Errorf("server: metrics: %w", err)
		}
	}
	return s, nil
}

// serviceNames are reported SERVING by the health service.
var serviceNames = []string{
	nudgev1.IngestService_ServiceDesc.ServiceName,
	nudgev1.DecisionService_ServiceDesc.ServiceName,
	nudgev1.ProfileService_ServiceDesc.ServiceName,
	nudgev1.AdminService_ServiceDesc.ServiceName,
	nudgev1.ActionService_ServiceDesc.ServiceName,
}

// HTTP/2 flow-control windows of the server (see NewGRPCServer): a stream
// may have streamWindow bytes of requests in transit, a connection
// connWindow. 1 MiB holds about 25 batches of 500 events, three times the
// default limits.max_in_flight.
const (
	streamWindow = 1 << 20
	connWindow   = 4 << 20
)

// NewGRPCServer returns a grpc.Server with nudge's services, health and
// reflection registered, behind the interceptor chain below. opts come
// after the server's own options (they win on conflicts); interceptors in
// opts run inside the chain.
//
// The chain, outermost first (named and ordered in one place, as spicedb's
// pkg/cmd/server/defaults.go does):
//
//  0. redaction: an error status naming a user (`user "<id>"`) names it by
//     its keyed hash instead, unless Config.LogUserIDs, so ids reach neither
//     RPC spans nor proxies.
//  1. recovery: a panic in a handler (or in an interceptor below) becomes
//     Internal, logged at error with its stack.
//  2. request id: the caller's x-request-id when sane, else a random one;
//     sent back in the response header.
//     Then, only with Config.Tokens, late admission (admitLate): the
//     token check for a call grpc served without its InTapHandle.
//  3. call log (calllog.go): one line per finished call (never the
//     payloads), with the request id, the token name and the trace id. A
//     user id in an error is hashed unless Config.LogUserIDs.
//  4. decode check: a request that is not a valid protobuf message (the
//     wire codec, see wireCodec) gets InvalidArgument instead of grpc's
//     Internal. It sits before anything that reads requests.
//  5. rate limit: per token, events and decisions (see Token). Only with
//     Config.Tokens.
//
// then the handler. Authentication is not an interceptor for calls on
// grpc's own transport: before all of them, when a call's headers arrive
// and before its request is read,
// admitCall (admission.go, grpc's InTapHandle) refuses calls without a
// valid token or the method's role (the health service skips it: load
// balancers probe without tokens), logs them as the call log would, and
// puts the caller's principal in the call's context. Then, on the call's
// goroutine, recvGate (a stats handler) makes a batch call wait for room
// in the receive bound before grpc reads its request. A call grpc serves
// through its ServeHTTP (nudged's HTTP listener) skips InTapHandle: an
// interceptor after the request id authenticates it the same way
// (admitLate), so no transport can bypass the tokens.
func (s *Server) NewGRPCServer(opts ...grpc.ServerOption) *grpc.Server {
	log := s.cfg.Logger
	recover := recovery.WithRecoveryHandlerContext(func(ctx context.Context, p any) error {
		log.ErrorContext(ctx, "panic in handler", "panic", s.redactUsers(fmt.Sprint(p)), "stack", string(debug.Stack()))
		return errPanicked
	})
	codec, checkDecodedUnary, checkDecodedStream := wireCodec()
	unary := []grpc.UnaryServerInterceptor{
		s.redactUnary,
		recovery.UnaryServerInterceptor(recover),
		requestIDUnary,
	}
	stream := []grpc.StreamServerInterceptor{
		s.redactStream,
		recovery.StreamServerInterceptor(recover),
		requestIDStream,
	}
	if s.tokens != nil {
		// Before the call log, which names the token: a call served
		// through ServeHTTP (the HTTP listener) skips InTapHandle.
		unary = append(unary, s.admitLateUnary)
		stream = append(stream, s.admitLateStream)
	}
	unary = append(unary, s.callLogUnary)
	stream = append(stream, s.callLogStream)
	// Before anything that reads requests: the rate limit counts events.
	unary = append(unary, checkDecodedUnary)
	stream = append(stream, checkDecodedStream)
	if s.tokens != nil {
		unary = append(unary, s.limitUnary)
		stream = append(stream, s.limitStream)
	}
	opts = append([]grpc.ServerOption{
		codec,
		// Before any request is read: tokens, roles and the receive
		// bound (admission.go).
		grpc.InTapHandle(s.admitCall),
		grpc.StatsHandler(recvGate{metrics: s.metrics}),
		grpc.MaxRecvMsgSize(s.cfg.MaxRecvMsgBytes),
		// Idle and abusive connections: a stream limit per connection,
		// pings that find vanished peers, idle connections closed, and
		// clients that ping too often disconnected.
		grpc.MaxConcurrentStreams(uint32(s.cfg.MaxStreamsPerConn)),
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionIdle: s.cfg.MaxConnectionIdle,
			Time:              s.cfg.KeepaliveTime,
			Timeout:           s.cfg.KeepaliveTimeout,
		}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             s.cfg.KeepaliveMinTime,
			PermitWithoutStream: true,
		}),
		// Fixed HTTP/2 windows bound what a connection's unread requests
		// take in the server: grpc's default dynamic windows grow to
		// 16 MiB per stream, so streams waiting for room (see
		// Config.MaxInFlightEvents) could hold that much each.
		grpc.InitialWindowSize(streamWindow),
		grpc.InitialConnWindowSize(connWindow),
		grpc.ChainUnaryInterceptor(unary...),
		grpc.ChainStreamInterceptor(stream...),
	}, opts...)
	if s.cfg.StreamWorkers > 0 {
		// A call served by a worker runs on a goroutine whose stack has
		// already grown: a new goroutine per call spent about a tenth of
		// nudged's CPU per decision growing its stack (BENCHMARKS.md,
		// issue 17). Calls beyond the workers busy get a goroutine each.
		opts = append(opts, grpc.NumStreamWorkers(uint32(s.cfg.StreamWorkers)))
	}
	g := grpc.NewServer(opts...)
	nudgev1.RegisterIngestServiceServer(g, s)
	nudgev1.RegisterDecisionServiceServer(g, s)
	nudgev1.RegisterProfileServiceServer(g, s)
	nudgev1.RegisterAdminServiceServer(g, s)
	nudgev1.RegisterActionServiceServer(g, s)
	healthpb.RegisterHealthServer(g, s.health)
	for _, name := range append([]string{""}, serviceNames...) {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	reflection.Register(g)
	return g
}

// storeServices are the services that cannot work without the store:
// reported NOT_SERVING while it is unreachable. DecisionService is not
// among them: it answers degraded decisions without the store.
var storeServices = []string{
	nudgev1.IngestService_ServiceDesc.ServiceName,
	nudgev1.ProfileService_ServiceDesc.ServiceName,
	nudgev1.ActionService_ServiceDesc.ServiceName,
}

// SetStoreReachable reports in the health service whether the store is
// reachable: while it is not, IngestService, ProfileService and
// ActionService are NOT_SERVING (a readiness probe on IngestService takes
// the instance out of ingest load balancing), while the server as a whole
// ("") and DecisionService stay SERVING, since decisions degrade instead
// of failing. After Drain it changes nothing.
func (s *Server) SetStoreReachable(ok bool) {
	st := healthpb.HealthCheckResponse_SERVING
	if !ok {
		st = healthpb.HealthCheckResponse_NOT_SERVING
	}
	for _, name := range storeServices {
		s.health.SetServingStatus(name, st)
	}
}

// Drain makes the server report NOT_SERVING and ends every ingest stream
// once its in-flight batches are answered (the stream then ends with
// UNAVAILABLE, so producers re-send the rest elsewhere). Call it before
// grpc.Server.GracefulStop.
func (s *Server) Drain() {
	s.drainOnce.Do(func() {
		s.health.Shutdown()
		close(s.draining)
	})
}

// Shutdown drains the server and stops g gracefully, waiting at most
// timeout for calls to finish before closing them.
func (s *Server) Shutdown(g *grpc.Server, timeout time.Duration) {
	s.Drain()
	done := make(chan struct{})
	go func() {
		g.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.cfg.Logger.Warn("drain timeout passed; closing the remaining calls", "timeout", timeout)
		g.Stop()
		<-done
	}
}
