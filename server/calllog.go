package server

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// The call log: one line per finished call, "finished call", with the
// fields of go-grpc-middleware's logging interceptor (protocol,
// grpc.component, grpc.service, grpc.method, grpc.method_type,
// peer.address, grpc.start_time, grpc.request.deadline, grpc.code,
// grpc.error, grpc.time_ms) plus logFields.
//
// It replaces logging.UnaryServerInterceptor, which builds every field
// (two formatted times, the peer address, context values) before the
// call, whatever the level: on a successful call, logged at debug and so
// dropped in production, that was about a tenth of the server's CPU per
// decision. This one asks the logger first.

// callLevel is the level of a finished call's line, by status code.
func callLevel(c codes.Code) slog.Level {
	switch c {
	case codes.OK, codes.NotFound, codes.Canceled:
		return slog.LevelDebug
	case codes.InvalidArgument, codes.Aborted, codes.Unavailable, codes.DeadlineExceeded,
		codes.Unauthenticated, codes.PermissionDenied, codes.ResourceExhausted:
		return slog.LevelWarn
	}
	return slog.LevelError
}

func (s *Server) callLogUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	s.logCall(ctx, info.FullMethod, "unary", start, err)
	return resp, err
}

func (s *Server) callLogStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	err := handler(srv, ss)
	kind := "server_stream"
	switch {
	case info.IsClientStream && info.IsServerStream:
		kind = "bidi_stream"
	case info.IsClientStream:
		kind = "client_stream"
	}
	s.logCall(ss.Context(), info.FullMethod, kind, start, err)
	return err
}

// logCall writes the line of a finished call if its level is enabled.
func (s *Server) logCall(ctx context.Context, fullMethod, kind string, start time.Time, err error) {
	if errors.Is(err, io.EOF) {
		err = nil
	}
	code := status.Code(err)
	lvl := callLevel(code)
	log := s.cfg.Logger
	if !log.Enabled(ctx, lvl) {
		return
	}
	service, method, _ := strings.Cut(strings.TrimPrefix(fullMethod, "/"), "/")
	fields := []any{
		"protocol", "grpc", "grpc.component", "server",
		"grpc.service", service, "grpc.method", method, "grpc.method_type", kind,
	}
	if p, ok := peer.FromContext(ctx); ok {
		fields = append(fields, "peer.address", p.Addr.String())
	}
	fields = append(fields, "grpc.start_time", start.Format(time.RFC3339))
	if d, ok := ctx.Deadline(); ok {
		fields = append(fields, "grpc.request.deadline", d.Format(time.RFC3339))
	}
	fields = append(fields, "grpc.code", code.String())
	if err != nil {
		fields = append(fields, "grpc.error", s.redactUsers(err.Error()))
	}
	fields = append(fields, logFields(ctx)...)
	ms := float64(time.Since(start).Microseconds()) / 1000
	fields = append(fields, "grpc.time_ms", strconv.FormatFloat(ms, 'f', -1, 64))
	log.Log(ctx, lvl, "finished call", fields...)
}
