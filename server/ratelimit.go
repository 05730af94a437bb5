package server

import (
	"context"
	"math"
	"strconv"
	"time"

	"golang.org/x/time/rate"
	"google.golang.org/grpc"

	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// charge takes from p's limiters what msg costs: one unit per event of an
// ingest batch, per decision asked for. Other messages are free. Past a
// limit the call fails with ResourceExhausted and a RetryInfo.
func (s *Server) charge(p *principal, msg any) error {
	switch m := msg.(type) {
	case *nudgev1.PublishRequest:
		return take(p, p.events, "events", len(m.GetEvents()), s.cfg.Now())
	case *nudgev1.StreamRequest:
		return take(p, p.events, "events", len(m.GetEvents()), s.cfg.Now())
	case *nudgev1.GetDecisionRequest:
		return take(p, p.decisions, "decisions", 1, s.cfg.Now())
	case *nudgev1.BatchGetDecisionsRequest:
		return take(p, p.decisions, "decisions", len(m.GetQueries()), s.cfg.Now())
	}
	return nil
}

// take takes n units from l at now, or fails saying when they will be
// there.
func take(p *principal, l *rate.Limiter, unit string, n int, now time.Time) error {
	if l == nil || n == 0 {
		return nil
	}
	if n > l.Burst() {
		// It could never pass: a ResourceExhausted with a delay would
		// have the caller retry it for ever.
		return overBurst(p.name, unit, n, l.Burst())
	}
	if l.AllowN(now, n) {
		return nil
	}
	missing := float64(n) - l.TokensAt(now)
	// Whole milliseconds, rounded up (past float noise) so that a retry
	// after the delay finds the units there.
	ms := math.Ceil(missing/float64(l.Limit())*1000 - 1e-6)
	wait := time.Duration(min(max(ms, 1), float64(24*time.Hour/time.Millisecond))) * time.Millisecond
	limit := strconv.FormatFloat(float64(l.Limit()), 'g', -1, 64)
	return overLimit(p.name, limit, unit, wait)
}

// limitUnary charges a unary call to its token before the handler runs.
func (s *Server) limitUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if p := principalFrom(ctx); p != nil {
		if err := s.charge(p, req); err != nil {
			return nil, err
		}
	}
	return handler(ctx, req)
}

// limitStream charges every message a stream receives to its token. Over
// the limit, the receive fails with ResourceExhausted and the stream ends
// with it once the batches already read are answered; the message that was
// over is not processed. A producer re-sends its unanswered batches after
// the RetryInfo delay: ending the stream rather than delaying the read
// keeps the server from holding a stream's batches while it waits.
func (s *Server) limitStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	p := principalFrom(ss.Context())
	if p == nil || (p.events == nil && p.decisions == nil) {
		return handler(srv, ss)
	}
	return handler(srv, &limitedStream{ServerStream: ss, s: s, p: p})
}

type limitedStream struct {
	grpc.ServerStream
	s *Server
	p *principal
}

func (l *limitedStream) RecvMsg(m any) error {
	if err := l.ServerStream.RecvMsg(m); err != nil {
		return err
	}
	return l.s.charge(l.p, m)
}
