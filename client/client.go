package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Client is a connection to a nudge server (or a load balancer in front of
// several). It is safe for concurrent use.
type Client struct {
	conn     *grpc.ClientConn
	decide   nudgev1.DecisionServiceClient
	ingest   nudgev1.IngestServiceClient
	profiles nudgev1.ProfileServiceClient
}

// Option configures Dial.
type Option func(*dialConfig)

type dialConfig struct {
	tls      *tls.Config
	insecure bool // explicitly asked for with WithInsecure
	token    string
	dialOpts []grpc.DialOption
	tracer   trace.TracerProvider // nil: the global provider
}

// WithTLS connects with TLS using cfg (nil: the system roots and the
// target's host name). Default: TLS with the system roots, except for
// loopback targets (see Dial).
func WithTLS(cfg *tls.Config) Option {
	return func(c *dialConfig) {
		if cfg == nil {
			cfg = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		c.tls = cfg
		c.insecure = false
	}
}

// WithInsecure connects in plaintext, whatever the target. Together with
// WithToken it is also the explicit opt-in to send the token in plaintext.
func WithInsecure() Option {
	return func(c *dialConfig) {
		c.insecure = true
		c.tls = nil
	}
}

// WithToken sends "authorization: Bearer <token>" with every call. The
// token is only sent over TLS, unless WithInsecure was given explicitly: a
// token on an implicitly plaintext (loopback) connection makes Dial fail
// with ErrTokenNeedsTLS.
func WithToken(token string) Option {
	return func(c *dialConfig) { c.token = token }
}

// WithDialOptions adds grpc.DialOptions after the ones Dial builds (they
// win on conflicts), e.g. grpc.WithConnectParams for faster reconnects.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *dialConfig) { c.dialOpts = append(c.dialOpts, opts...) }
}

// WithTracerProvider makes a client span with tp for every call, a child of
// the span in the call's context. Default (or nil): the global provider
// (otel.GetTracerProvider), a no-op unless the application set one.
//
// Either way the call carries its trace context to the server as a W3C
// traceparent header, so the server's spans join the caller's trace: with a
// no-op provider the caller's own span is their parent.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return func(c *dialConfig) { c.tracer = tp }
}

// ErrTokenNeedsTLS is returned by Dial when WithToken is used on a
// plaintext connection that was not asked for with WithInsecure.
var ErrTokenNeedsTLS = errors.New("client: a token is sent only over TLS (give WithInsecure to send it in plaintext)")

// Dial returns a client for target, a gRPC target such as
// "127.0.0.1:7070" or "dns:///nudge.internal:7070". It does not wait for
// the connection: the first call does.
//
// Transport security: WithTLS or WithInsecure decide. Without either, a
// loopback target (localhost, 127.0.0.0/8, ::1, unix sockets) is dialled
// in plaintext, any other target with TLS and the system roots.
//
// Tracing: Dial installs an OpenTelemetry gRPC stats handler (see
// WithTracerProvider) that propagates the W3C trace context, whatever the
// global propagator; it also records the client RPC metrics on the global
// meter provider.
func Dial(target string, opts ...Option) (*Client, error) {
	var cfg dialConfig
	for _, o := range opts {
		o(&cfg)
	}
	plaintext := cfg.insecure || (cfg.tls == nil && isLoopback(target))
	var dopts []grpc.DialOption
	if plaintext {
		dopts = append(dopts, grpc.WithTransportCredentials(insecure.NewCredentials()))
	} else {
		t := cfg.tls
		if t == nil {
			t = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		dopts = append(dopts, grpc.WithTransportCredentials(credentials.NewTLS(t)))
	}
	if cfg.token != "" {
		if plaintext && !cfg.insecure {
			return nil, ErrTokenNeedsTLS
		}
		dopts = append(dopts, grpc.WithPerRPCCredentials(bearer{token: cfg.token, secure: !plaintext}))
	}
	// The propagator is explicit: the global one is a no-op unless the
	// application set one, and the server expects traceparent.
	otelOpts := []otelgrpc.Option{otelgrpc.WithPropagators(propagation.TraceContext{})}
	if cfg.tracer != nil {
		otelOpts = append(otelOpts, otelgrpc.WithTracerProvider(cfg.tracer))
	}
	dopts = append(dopts, grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelOpts...)))
	dopts = append(dopts, cfg.dialOpts...)
	conn, err := grpc.NewClient(target, dopts...)
	if err != nil {
		return nil, fmt.Errorf("client: dial %s: %w", target, err)
	}
	return &Client{
		conn:     conn,
		decide:   nudgev1.NewDecisionServiceClient(conn),
		ingest:   nudgev1.NewIngestServiceClient(conn),
		profiles: nudgev1.NewProfileServiceClient(conn),
	}, nil
}

// Close closes the connection. Close every Publisher of the client first:
// a publisher whose connection is closed can only fail.
func (c *Client) Close() error { return c.conn.Close() }

// Conn returns the underlying connection, for the methods this package
// does not wrap (ProfileService's but GetFeatures, AdminService).
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// isLoopback reports whether target names this machine.
func isLoopback(target string) bool {
	if strings.HasPrefix(target, "unix:") || strings.HasPrefix(target, "unix-abstract:") {
		return true
	}
	if i := strings.Index(target, ":///"); i >= 0 {
		target = target[i+4:]
	}
	host, _, err := net.SplitHostPort(target)
	if err != nil {
		host = target
	}
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.IsLoopback()
}

// bearer is per-RPC "authorization: Bearer" credentials.
type bearer struct {
	token  string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.token}, nil
}

func (b bearer) RequireTransportSecurity() bool { return b.secure }

// Decision is a server's decision: the protobuf Decision (its getters and
// fields are promoted) plus the version of the profile it was made on (0:
// no profile, or degraded).
type Decision struct {
	*nudgev1.Decision
	ProfileVersion uint64
}

// DecideOption sets an optional field of a decision request.
type DecideOption func(*decideConfig)

type decideConfig struct {
	placement  string
	context    map[string]string
	budget     time.Duration
	explain    bool
	minVersion uint64
	reserveKey string
}

// WithPlacement says where the answer will be shown ("home_banner").
// Ignored by DecideBatch (set Query.Placement).
func WithPlacement(p string) DecideOption { return func(c *decideConfig) { c.placement = p } }

// WithContext passes caller context visible to offer rules. Ignored by
// DecideBatch (set Query.Context).
func WithContext(kv map[string]string) DecideOption {
	return func(c *decideConfig) { c.context = kv }
}

// WithBudget sets the time budget of the call (of the whole batch for
// DecideBatch). Default: the server's.
func WithBudget(d time.Duration) DecideOption { return func(c *decideConfig) { c.budget = d } }

// WithExplain asks for the full evaluation trace (Decision.Trace). With
// tokens, it needs the explain or admin role.
func WithExplain() DecideOption { return func(c *decideConfig) { c.explain = true } }

// WithMinProfileVersion decides only on a profile at least version v (an
// EventResult's ProfileVersion); older, the decision is NONE with Stale.
// Ignored by DecideBatch (set Query.MinProfileVersion).
func WithMinProfileVersion(v uint64) DecideOption {
	return func(c *decideConfig) { c.minVersion = v }
}

// WithReserve makes a SEND verdict take the frequency-cap slot at once,
// under the idempotency key (asking again with the key returns the same
// decision). Confirm with a message_sent event whose attribute
// idempotency_key is key. Not available in DecideBatch. With tokens, it
// needs the send role.
func WithReserve(key string) DecideOption { return func(c *decideConfig) { c.reserveKey = key } }

// Decide asks what to do for userID on channel now. Errors are gRPC status
// errors (InvalidArgument for a malformed request); a slow or unavailable
// store is not an error but a Degraded decision.
func (c *Client) Decide(ctx context.Context, userID, channel string, opts ...DecideOption) (Decision, error) {
	var cfg decideConfig
	for _, o := range opts {
		o(&cfg)
	}
	req := &nudgev1.GetDecisionRequest{
		UserId:            userID,
		Channel:           channel,
		Placement:         cfg.placement,
		Context:           cfg.context,
		Explain:           cfg.explain,
		MinProfileVersion: cfg.minVersion,
		Reserve:           cfg.reserveKey != "",
		IdempotencyKey:    cfg.reserveKey,
	}
	if cfg.budget > 0 {
		req.Budget = durationpb.New(cfg.budget)
	}
	resp, err := c.decide.GetDecision(ctx, req)
	if err != nil {
		return Decision{}, err
	}
	return Decision{Decision: resp.GetDecision(), ProfileVersion: resp.GetProfileVersion()}, nil
}

// Query is one user's question in DecideBatch.
type Query struct {
	UserID            string
	Channel           string
	Placement         string
	Context           map[string]string
	MinProfileVersion uint64
}

// DecideBatch decides for many users (at most 1000) in one call; results
// are in query order. Of the options only WithBudget (for the whole batch)
// and WithExplain apply.
func (c *Client) DecideBatch(ctx context.Context, queries []Query, opts ...DecideOption) ([]Decision, error) {
	var cfg decideConfig
	for _, o := range opts {
		o(&cfg)
	}
	req := &nudgev1.BatchGetDecisionsRequest{Explain: cfg.explain}
	if cfg.budget > 0 {
		req.Budget = durationpb.New(cfg.budget)
	}
	req.Queries = make([]*nudgev1.DecisionQuery, len(queries))
	for i, q := range queries {
		req.Queries[i] = &nudgev1.DecisionQuery{
			UserId:            q.UserID,
			Channel:           q.Channel,
			Placement:         q.Placement,
			Context:           q.Context,
			MinProfileVersion: q.MinProfileVersion,
		}
	}
	resp, err := c.decide.BatchGetDecisions(ctx, req)
	if err != nil {
		return nil, err
	}
	if len(resp.GetResults()) != len(queries) {
		return nil, fmt.Errorf("client: %d decisions for %d queries", len(resp.GetResults()), len(queries))
	}
	out := make([]Decision, len(queries))
	for i, r := range resp.GetResults() {
		out[i] = Decision{Decision: r.GetDecision(), ProfileVersion: r.GetProfileVersion()}
	}
	return out, nil
}

// Features are the features of users, as a model reads them: one row per
// user asked, in order, every row computed with the rules of RulesVersion
// on windows ending at At.
type Features struct {
	// Names are the features of every row: those asked for, or every
	// feature of the rules in the file's order.
	Names        []string
	Rows         []*nudgev1.FeatureRow
	RulesVersion string
	At           time.Time
}

// GetFeatures evaluates features of the rules in force (the rules file's
// features section) for up to 1000 users in one call: the names given,
// or every feature when none. A row's Values holds each feature's value,
// its Errors why a feature has none (its expression failed on the
// profile); a user never seen has Found false and the features of an
// empty profile. Errors are gRPC status errors: INVALID_ARGUMENT for a
// feature the rules do not define (the message lists those they do),
// FAILED_PRECONDITION when they define none, UNAVAILABLE when the store
// is. With tokens, it needs the features or admin role.
func (c *Client) GetFeatures(ctx context.Context, userIDs []string, features ...string) (Features, error) {
	resp, err := c.profiles.GetFeatures(ctx, &nudgev1.GetFeaturesRequest{UserIds: userIDs, Features: features})
	if err != nil {
		return Features{}, err
	}
	if len(resp.GetRows()) != len(userIDs) {
		return Features{}, fmt.Errorf("client: %d feature rows for %d users", len(resp.GetRows()), len(userIDs))
	}
	return Features{Names: resp.GetFeatures(), Rows: resp.GetRows(), RulesVersion: resp.GetRulesVersion(), At: resp.GetAt().AsTime()}, nil
}
