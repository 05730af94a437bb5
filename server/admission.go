package server

import (
	"context"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sync/semaphore"

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
// The bytes being received are bounded across all calls too
// (Config.MaxRecvBytesInFlight). A call holds what its request may take
// from before its request is read until it is read (or the call ends): a
// batch method (Publish, BatchGetDecisions) Config.MaxRecvMsgBytes, any
// other method smallRequestBytes; one token at most half the bound, so
// one caller cannot take it all. A call that does not fit waits for room,
// in arrival order, up to its deadline. It waits in its own goroutine,
// when grpc reports its headers to the stats handler (recvGate) and
// before grpc reads its request: meanwhile the client can have sent at
// most the stream's flow-control window (streamWindow), so waiting calls
// take at most that each, and a connection at most
// Config.MaxStreamsPerConn of them. (admitCall cannot wait: it runs on
// the connection's reading goroutine.) IngestService.Stream does not
// hold: a stream has at most one message in receipt at a time, bounded by
// Config.MaxRecvMsgBytes. What the server does with requests once read is
// bounded by Config.MaxInFlightEvents and Config.MaxPendingReads.

// smallRequestBytes is what a call of a method without batches holds of
// the receive bound: a valid GetDecision request (the largest of them) is
// under 16 KiB.
const smallRequestBytes = 64 << 10

// batchMethods are the unary methods whose requests are batches, which may
// be as large as Config.MaxRecvMsgBytes.
var batchMethods = map[string]bool{
	"/" + nudgev1.IngestService_ServiceDesc.ServiceName + "/Publish":             true,
	"/" + nudgev1.DecisionService_ServiceDesc.ServiceName + "/BatchGetDecisions": true,
}

// unheld are the methods that do not hold the receive bound: the ingest
// stream (see above) and health checks, which load balancers must always
// get through.
func unheld(method string) bool {
	return method == "/"+nudgev1.IngestService_ServiceDesc.ServiceName+"/Stream" ||
		strings.HasPrefix(method, "/"+healthpb.Health_ServiceDesc.ServiceName+"/")
}

// recvBound is the receive bound: the bytes that calls being received may
// take, in total and per token (each principal has its own semaphore of
// perToken).
type recvBound struct {
	all      *semaphore.Weighted
	perToken int64
}

func newRecvBound(bound int64) *recvBound {
	return &recvBound{all: semaphore.NewWeighted(bound), perToken: bound / 2}
}

// holding is one call's share of the bound: n bytes, for p (nil: no
// authentication, no per-token share). It is taken by wait and given back
// once by release.
type holding struct {
	b    *recvBound
	p    *principal
	n    int64
	held atomic.Bool // wait succeeded and release has not run
}

// tryWait takes the call's share if there is room now.
func (h *holding) tryWait() bool {
	if h.p != nil && !h.p.recv.TryAcquire(h.n) {
		return false
	}
	if !h.b.all.TryAcquire(h.n) {
		if h.p != nil {
			h.p.recv.Release(h.n)
		}
		return false
	}
	h.held.Store(true)
	return true
}

// wait takes the call's share, waiting for room until ctx ends.
func (h *holding) wait(ctx context.Context) error {
	if h.p != nil {
		if err := h.p.recv.Acquire(ctx, h.n); err != nil {
			return err
		}
	}
	if err := h.b.all.Acquire(ctx, h.n); err != nil {
		if h.p != nil {
			h.p.recv.Release(h.n)
		}
		return err
	}
	h.held.Store(true)
	return nil
}

func (h *holding) release() {
	if !h.held.Swap(false) {
		return
	}
	h.b.all.Release(h.n)
	if h.p != nil {
		h.p.recv.Release(h.n)
	}
}

type holdingKey struct{}

// admitCall is the server's grpc InTapHandle (see above). It runs under the
// connection's lock: it does no I/O beyond a refused call's log line.
func (s *Server) admitCall(ctx context.Context, info *tap.Info) (context.Context, error) {
	method := info.FullMethodName
	if strings.HasPrefix(method, "/"+healthpb.Health_ServiceDesc.ServiceName+"/") {
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
	if unheld(method) {
		return ctx, nil
	}
	n := int64(smallRequestBytes)
	if batchMethods[method] {
		n = int64(s.cfg.MaxRecvMsgBytes)
	}
	return context.WithValue(ctx, holdingKey{}, &holding{b: s.recv, p: p, n: n}), nil
}

// refused logs and counts a call admitCall refused: it never reaches the
// interceptors, which log every other call.
func (s *Server) refused(ctx context.Context, method string, p *principal, err error) {
	s.metrics.countRefused(ctx, err)
	ci := &callInfo{requestID: requestID(ctx)}
	if p != nil {
		ci.token = p.name
	}
	s.logCall(context.WithValue(ctx, callInfoKey{}, ci), method, "refused before reading", time.Now(), err)
}

// recvGate is the stats.Handler that applies the receive bound: grpc
// tells it that a call's headers arrived (InHeader) on the call's own
// goroutine, before the request is read, and there the call waits for its
// share; it tells it that the request was read (InPayload) or the call
// ended (End), and the share goes back. It sees the context admitCall
// returned.
type recvGate struct{ metrics *instruments }

func (recvGate) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (g recvGate) HandleRPC(ctx context.Context, st stats.RPCStats) {
	h, ok := ctx.Value(holdingKey{}).(*holding)
	if !ok {
		return
	}
	switch st.(type) {
	case *stats.InHeader:
		if h.tryWait() {
			return
		}
		g.metrics.recvWaiting.Add(ctx, 1)
		defer g.metrics.recvWaiting.Add(ctx, -1)
		// A call whose deadline passes (or that is cancelled) while it
		// waits is not held: its context has ended, so grpc fails it.
		_ = h.wait(ctx)
	case *stats.InPayload, *stats.End:
		h.release()
	}
}

func (recvGate) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (recvGate) HandleConn(context.Context, stats.ConnStats) {}
