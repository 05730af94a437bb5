package server

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"log/slog"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// requestIDHeader carries a call's request id: read from the request's
// metadata when the caller sets a sane one, always sent back in the
// response header.
const requestIDHeader = "x-request-id"

// maxRequestIDLen bounds a caller's request id; a longer one is replaced.
const maxRequestIDLen = 128

// callInfo is what a call's log line says about it beyond grpc's own
// fields and the token (the principal in the context). The request id
// interceptor creates it.
type callInfo struct {
	requestID string
}

type callInfoKey struct{}

func callInfoFrom(ctx context.Context) *callInfo {
	ci, _ := ctx.Value(callInfoKey{}).(*callInfo)
	return ci
}

// RequestID returns the call's request id (see the x-request-id header);
// false when ctx is not a call's.
func RequestID(ctx context.Context) (string, bool) {
	if ci := callInfoFrom(ctx); ci != nil {
		return ci.requestID, true
	}
	return "", false
}

// requestID is the caller's x-request-id when it is sane (printable
// ASCII, at most maxRequestIDLen bytes), else a new random one.
func requestID(ctx context.Context) string {
	if v := metadata.ValueFromIncomingContext(ctx, requestIDHeader); len(v) > 0 && saneRequestID(v[0]) {
		return v[0]
	}
	var b [8]byte
	_, _ = rand.Read(b[:]) // never fails (crypto/rand panics rather than return an error)
	return hex.EncodeToString(b[:])
}

func saneRequestID(id string) bool {
	if id == "" || len(id) > maxRequestIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x20 || id[i] > 0x7e {
			return false
		}
	}
	return true
}

// requestIDUnary gives the call its request id and sends it back in the
// response header.
func requestIDUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	ci := &callInfo{requestID: requestID(ctx)}
	_ = grpc.SetHeader(ctx, metadata.Pairs(requestIDHeader, ci.requestID)) // fails only once headers are sent
	return handler(context.WithValue(ctx, callInfoKey{}, ci), req)
}

func requestIDStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := ss.Context()
	ci := &callInfo{requestID: requestID(ctx)}
	_ = ss.SetHeader(metadata.Pairs(requestIDHeader, ci.requestID))
	return handler(srv, &contextStream{ServerStream: ss, ctx: context.WithValue(ctx, callInfoKey{}, ci)})
}

// contextStream is a stream with another context.
type contextStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *contextStream) Context() context.Context { return c.ctx }

// logFields are the fields of a call's log line beyond grpc's: request id,
// token name (of an authenticated call) and trace id (when a valid span is in the
// context).
func logFields(ctx context.Context) []any {
	var f []any
	if ci := callInfoFrom(ctx); ci != nil {
		f = append(f, "request_id", ci.requestID)
	}
	if p := principalFrom(ctx); p != nil {
		f = append(f, "token", p.name)
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		f = append(f, "trace_id", sc.TraceID().String())
	}
	return f
}

// newUserKey returns the key of the hash that stands for a user id in
// logs. It is random per server: hashes can be matched within one
// process's logs, and cannot be reversed by trying likely ids.
func newUserKey() []byte {
	k := make([]byte, 32)
	_, _ = rand.Read(k)
	return k
}

// userAttr is how a log line names a user: "user" with a keyed hash of the
// id ("h:" and 16 hex digits), or the id itself when Config.LogUserIDs is
// set.
func (s *Server) userAttr(id string) slog.Attr {
	return slog.String("user", s.logUser(id))
}

func (s *Server) logUser(id string) string {
	if s.cfg.LogUserIDs {
		return id
	}
	m := hmac.New(sha256.New, s.userKey)
	m.Write([]byte(id))
	return "h:" + hex.EncodeToString(m.Sum(nil))[:16]
}

// redactUsers replaces the user ids an error message names the way
// profile's errors do (`user "<id>"`, Go-quoted) by their logUser form.
// It is for log lines only: callers get the message as it is, since it is
// their own user they asked about. When profile words its errors
// otherwise, TestUserIDsNotLogged fails.
func (s *Server) redactUsers(msg string) string {
	if s.cfg.LogUserIDs {
		return msg
	}
	const prefix = `user `
	var b strings.Builder
	for {
		i := strings.Index(msg, prefix+`"`)
		if i < 0 {
			if b.Len() == 0 {
				return msg // nothing to redact: no copy
			}
			b.WriteString(msg)
			return b.String()
		}
		b.WriteString(msg[:i+len(prefix)])
		msg = msg[i+len(prefix):]
		quoted, err := strconv.QuotedPrefix(msg)
		if err != nil { // not a quoted string after all
			b.WriteByte('"')
			msg = msg[1:]
			continue
		}
		id, _ := strconv.Unquote(quoted)
		b.WriteString(s.logUser(id))
		msg = msg[len(quoted):]
	}
}

// redactStatus rewrites an error status whose message names a user (see
// redactUsers), so that the id reaches neither the RPC span (otelgrpc copies
// status messages into spans exported to a collector) nor any proxy log.
// Callers lose nothing they need: a failed batch is re-sent whole.
func (s *Server) redactStatus(err error) error {
	if err == nil || s.cfg.LogUserIDs {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := s.redactUsers(st.Message())
	if msg == st.Message() {
		return err
	}
	p := st.Proto()
	p.Message = msg
	return status.FromProto(p).Err()
}

// redactUnary and redactStream apply redactStatus to every call's error.
func (s *Server) redactUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	resp, err := handler(ctx, req)
	return resp, s.redactStatus(err)
}

func (s *Server) redactStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return s.redactStatus(handler(srv, ss))
}
