package server

import (
	"context"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/tap"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// Admission: what the server decides about a call from its headers alone,
// before any byte of its request is read.
//
// grpc-go reads a request whole before any interceptor runs, into a
// buffer of the size the request announces (up to Config.MaxRecvMsgBytes).
// An interceptor that refuses a call without a token therefore refuses it
// only after the server holds its payload: 32 such calls of 16 MiB took
// 1.25 GB. admitCall runs as grpc's InTapHandle instead, when the call's
// headers arrive: a call without a valid token, or whose token lacks the
// method's role, is refused there and its payload is never read (grpc
// resets the stream, and the frames already in flight are dropped as they
// arrive).
//
// The bytes being received are bounded too (Config.MaxRecvBytesInFlight).
// A call of a batch method (Publish, BatchGetDecisions), whose request
// may be as large as Config.MaxRecvMsgBytes, holds that much of the bound
// from before its request is read until it is read (or the call ends);
// one token holds at most half the bound, so one caller cannot take it
// all. A call that does not fit waits for room, in arrival order, up to
// its deadline. It waits in its own goroutine, when grpc reports its
// headers to the stats handler (recvGate) and before grpc reads its
// request: meanwhile the client can have sent at most the stream's
// flow-control window (streamWindow). (admitCall cannot wait: it runs on
// the connection's reading goroutine.) Other methods do not hold: their
// valid requests are small, and grpc-go accepts no more than
// Config.MaxRecvMsgBytes of any request before a handler sees it (see
// SECURITY.md, known limits); holding for them would cost every decision
// a semaphore for nothing. An ingest stream has at most one message in
// receipt at a time. What the server does with requests once read is
// bounded by Config.MaxInFlightEvents and Config.MaxPendingReads.

// batchMethods are the unary methods whose requests are batches.
var batchMethods = map[string]bool{
	nudgev1.IngestService_Publish_FullMethodName:             true,
	nudgev1.DecisionService_BatchGetDecisions_FullMethodName: true,
}

// healthPrefix starts the methods of the health service, which load
// balancers call without a token.
var healthPrefix = "/" + healthpb.Health_ServiceDesc.ServiceName + "/"

// holding is one batch call's share of the receive bound (all): n bytes,
// and as much of its token's share (nil: no authentication). It is taken
// by take and given back once by release.
type holding struct {
	all   *semaphore.Weighted
	token *semaphore.Weighted
	n     int64
	held  atomic.Bool // taken and not released
}

// take takes the call's share from each semaphore, the token's first, with
// acquire; it gives back what it took when one refuses.
func (h *holding) take(acquire func(*semaphore.Weighted) bool) bool {
	if h.token != nil && !acquire(h.token) {
		return false
	}
	if !acquire(h.all) {
		if h.token != nil {
			h.token.Release(h.n)
		}
		return false
	}
	h.held.Store(true)
	return true
}

// tryTake takes the call's share if there is room now.
func (h *holding) tryTake() bool {
	return h.take(func(s *semaphore.Weighted) bool { return s.TryAcquire(h.n) })
}

// wait takes the call's share, waiting for room until ctx ends.
func (h *holding) wait(ctx context.Context) bool {
	return h.take(func(s *semaphore.Weighted) bool { return s.Acquire(ctx, h.n) == nil })
}

func (h *holding) release() {
	if !h.held.Swap(false) {
		return
	}
	h.all.Release(h.n)
	if h.token != nil {
		h.token.Release(h.n)
	}
}

type holdingKey struct{}

// admitCall is the server's grpc InTapHandle (see above). It runs under the
// connection's lock: it does no I/O beyond a refused call's log line.
func (s *Server) admitCall(ctx context.Context, info *tap.Info) (context.Context, error) {
	method := info.FullMethodName
	if strings.HasPrefix(method, healthPrefix) {
		return ctx, nil
	}
	var p *principal
	if s.tokens != nil {
		var err error
		if p, err = s.authorize(info.Header.Get("authorization"), method); err != nil {
			s.refused(ctx, method, p, err)
			return nil, err
		}
		ctx = context.WithValue(ctx, principalKey{}, p)
	}
	if !batchMethods[method] {
		return ctx, nil
	}
	h := &holding{all: s.recv, n: int64(s.cfg.MaxRecvMsgBytes)}
	if p != nil {
		h.token = p.recv
	}
	return context.WithValue(ctx, holdingKey{}, h), nil
}

// Admit checks, from its headers alone, a call that is about to reach the
// server through grpc.Server.ServeHTTP (nudged's HTTP listener), before
// its request is read: nil, or the Unauthenticated or PermissionDenied
// status the gRPC port would answer (logged and counted as admitCall
// does). The health service is open. The call is checked again when it
// reaches the server (admitLate), so skipping Admit opens nothing.
func (s *Server) Admit(ctx context.Context, fullMethod string, authorization []string) error {
	if s.tokens == nil || strings.HasPrefix(fullMethod, healthPrefix) {
		return nil
	}
	p, err := s.authorize(authorization, fullMethod)
	if err != nil {
		s.refused(ctx, fullMethod, p, err)
	}
	return err
}

// admitLate authenticates a call that admitCall did not see, as admitCall
// would: grpc-go runs its InTapHandle only on its own HTTP/2 transport,
// not for the calls it serves through grpc.Server.ServeHTTP (nudged's HTTP
// listener transcodes Connect and gRPC-Web calls into those). It fails
// closed: a call without the principal admitCall puts in its context is
// authorized here. The receive bound (recvGate) does not cover such calls:
// the HTTP listener checks the token before it reads a request (Admit)
// and bounds each request's size.
func (s *Server) admitLate(ctx context.Context, method string) (context.Context, error) {
	if s.tokens == nil || strings.HasPrefix(method, healthPrefix) || principalFrom(ctx) != nil {
		return ctx, nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	p, err := s.authorize(md.Get("authorization"), method)
	if err != nil {
		s.refused(ctx, method, p, err)
		return nil, err
	}
	return context.WithValue(ctx, principalKey{}, p), nil
}

func (s *Server) admitLateUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ctx, err := s.admitLate(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) admitLateStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx, err := s.admitLate(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &contextStream{ServerStream: ss, ctx: ctx})
}

// refused logs and counts a call admitCall refused: it never reaches the
// interceptors, which log every other call.
func (s *Server) refused(ctx context.Context, method string, p *principal, err error) {
	s.metrics.countRefused(ctx, err)
	ctx = context.WithValue(ctx, callInfoKey{}, &callInfo{requestID: requestID(ctx)})
	if p != nil {
		ctx = context.WithValue(ctx, principalKey{}, p)
	}
	s.logCall(ctx, method, "refused before reading", time.Now(), err)
}

// recvGate is the stats.Handler that applies the receive bound: grpc
// tells it that a call's headers arrived (InHeader) on the call's own
// goroutine, before the request is read, and there a batch call waits for
// its share; it tells it that the request was read (InPayload) or the call
// ended (End), and the share goes back. It sees the context admitCall
// returned.
type recvGate struct{ metrics *instruments }

func (recvGate) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (g recvGate) HandleRPC(ctx context.Context, st stats.RPCStats) {
	switch st.(type) {
	case *stats.InHeader:
		h, ok := ctx.Value(holdingKey{}).(*holding)
		if !ok || h.tryTake() {
			return
		}
		g.metrics.recvWaiting.Add(ctx, 1)
		defer g.metrics.recvWaiting.Add(ctx, -1)
		// A call whose deadline passes (or that is cancelled) while it
		// waits is not held: its context has ended, so grpc fails it.
		h.wait(ctx)
	case *stats.InPayload, *stats.End:
		if h, ok := ctx.Value(holdingKey{}).(*holding); ok {
			h.release()
		}
	}
}

func (recvGate) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (recvGate) HandleConn(context.Context, stats.ConnStats) {}
