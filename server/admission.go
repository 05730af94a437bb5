package server

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"time"

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
// admitCall also bounds the bytes being received across all calls
// (Config.MaxRecvBytesInFlight): a call whose request is being received
// holds what its request may take, from its headers until its request is
// read (or the call ends), and a call that does not fit is refused with
// RESOURCE_EXHAUSTED and a RetryInfo rather than queued (InTapHandle must
// not block: it runs on the connection's reading goroutine). A batch
// method (Publish, BatchGetDecisions) holds Config.MaxRecvMsgBytes, any
// other method smallRequestBytes; one token may hold at most half the
// bound, so one caller cannot take it all. IngestService.Stream is not
// held: a stream has at most one message in receipt at a time, bounded
// by Config.MaxRecvMsgBytes, and streams by the per-connection stream
// limit. The bound is on what requests can take while they are read; what
// the server does with them afterwards is bounded by
// Config.MaxInFlightEvents and Config.MaxPendingReads.

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
// take, in total and per token.
type recvBound struct {
	bound    int64
	perToken int64

	mu      sync.Mutex
	held    int64
	byToken map[*principal]int64
}

func newRecvBound(bound int64) *recvBound {
	return &recvBound{bound: bound, perToken: bound / 2, byToken: map[*principal]int64{}}
}

// hold takes n bytes of the bound for p (nil: no authentication, no
// per-token share), or fails with the status to answer.
func (b *recvBound) hold(p *principal, n int64) (*holding, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.held+n > b.bound {
		return nil, receiving(b.bound, false)
	}
	if p != nil {
		if b.byToken[p]+n > b.perToken {
			return nil, receiving(b.bound, true)
		}
		b.byToken[p] += n
	}
	b.held += n
	return &holding{b: b, p: p, n: n}, nil
}

// holding is one call's share of the bound, given back once.
type holding struct {
	b    *recvBound
	p    *principal
	n    int64
	done atomic.Bool
}

func (h *holding) release() {
	if h.done.Swap(true) {
		return
	}
	b := h.b
	b.mu.Lock()
	defer b.mu.Unlock()
	b.held -= h.n
	if h.p != nil {
		if b.byToken[h.p] -= h.n; b.byToken[h.p] <= 0 {
			delete(b.byToken, h.p)
		}
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
	h, err := s.recv.hold(p, n)
	if err != nil {
		s.refused(ctx, method, p, err)
		return nil, err
	}
	return context.WithValue(ctx, holdingKey{}, h), nil
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

// recvReleaser gives a call's share of the receive bound back once its
// request is read, or the call ends without one. It is a stats.Handler:
// grpc tells it both, and it sees the context admitCall returned.
type recvReleaser struct{}

func (recvReleaser) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (recvReleaser) HandleRPC(ctx context.Context, st stats.RPCStats) {
	switch st.(type) {
	case *stats.InPayload, *stats.End:
		if h, ok := ctx.Value(holdingKey{}).(*holding); ok {
			h.release()
		}
	}
}

func (recvReleaser) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (recvReleaser) HandleConn(context.Context, stats.ConnStats) {}
