package server_test

import (
	"context"
	"errors"
	"io"
	"regexp"
	"strings"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"

	"github.com/nudge-dm/nudge/profile"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

var randomRequestID = regexp.MustCompile(`^[0-9a-f]{16}$`)

func TestRequestID(t *testing.T) {
	var logs logBuffer
	cfg := authConfig()
	cfg.Logger = logs.logger()
	h := start(t, okStore(), cfg)
	admin := nudgev1.NewAdminServiceClient(h.conn)
	tests := []struct {
		name   string
		sent   string // "" sends none
		secret string
		want   string // "" means a random one
	}{
		{"the caller's", "req-42 from:checkout", adminSecret, "req-42 from:checkout"},
		{"none sent", "", adminSecret, ""},
		{"too long", strings.Repeat("x", 129), adminSecret, ""},
		{"longest kept", strings.Repeat("y", 128), adminSecret, strings.Repeat("y", 128)},
		{"on a refused call", "refused-1", "", "refused-1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := callCtx(t)
			if tt.sent != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "x-request-id", tt.sent)
			}
			if tt.secret != "" {
				ctx = withToken(ctx, tt.secret)
			}
			var header metadata.MD
			_, err := admin.GetRules(ctx, &nudgev1.GetRulesRequest{}, grpc.Header(&header))
			if tt.secret != "" && err != nil {
				t.Fatal(err)
			}
			got := header.Get("x-request-id")
			if tt.secret == "" {
				// Refused from its headers, before the request is read
				// (admission.go): grpc answers with the status alone, so
				// the request id is only in the log line.
				if len(got) != 0 {
					t.Errorf("response header x-request-id = %q on a call refused before reading", got)
				}
				got = []string{tt.sent}
			}
			if len(got) != 1 {
				t.Fatalf("response header x-request-id = %q, want one value", got)
			}
			switch {
			case tt.want == "" && !randomRequestID.MatchString(got[0]):
				t.Errorf("x-request-id = %q, want 16 random hex digits", got[0])
			case tt.want != "" && got[0] != tt.want:
				t.Errorf("x-request-id = %q, want %q", got[0], tt.want)
			}
			if !strings.Contains(logs.String(), `"request_id":"`+got[0]+`"`) {
				t.Errorf("no log line with request_id %q:\n%s", got[0], logs.String())
			}
		})
	}
}

// TestRequestIDInHandlers: handlers see the id the caller gets back.
func TestRequestIDInHandlers(t *testing.T) {
	ids := make(chan string, 1)
	h := start(t, &fakeStore{get: func(ctx context.Context, _ string) (*profile.Profile, error) {
		id, _ := server.RequestID(ctx)
		ids <- id
		return nil, profile.ErrNotFound
	}}, server.Config{})
	var header metadata.MD
	if _, err := h.decide.GetDecision(callCtx(t), &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"}, grpc.Header(&header)); err != nil {
		t.Fatal(err)
	}
	if got, want := receive(t, ids, "the store's call"), header.Get("x-request-id"); len(want) != 1 || got != want[0] {
		t.Errorf("RequestID in the handler = %q, header %q", got, want)
	}
}

// TestCallLog: one line per finished call, at a level by code, with the
// request id, the token name once known, and never the payload.
func TestCallLog(t *testing.T) {
	clk := newTestClock()
	var logs logBuffer
	cfg := limitedConfig(clk, 0, 1, 1000)
	cfg.Logger = logs.logger()
	h := start(t, okStore(), cfg)
	admin := nudgev1.NewAdminServiceClient(h.conn)
	tests := []struct {
		name   string
		call   func(ctx context.Context) error
		method string
		code   codes.Code
		level  string
		token  string // "" means the field is absent
	}{
		{"OK", func(ctx context.Context) error {
			_, err := h.decide.BatchGetDecisions(withToken(ctx, limitedSecret), &nudgev1.BatchGetDecisionsRequest{Queries: queries(1000)})
			return err
		}, "BatchGetDecisions", codes.OK, "DEBUG", "limited"},
		{"over the limit", func(ctx context.Context) error {
			_, err := h.decide.GetDecision(withToken(ctx, limitedSecret), &nudgev1.GetDecisionRequest{UserId: "u1", Channel: "sms"})
			return err
		}, "GetDecision", codes.ResourceExhausted, "WARN", "limited"},
		{"lacks the role", func(ctx context.Context) error {
			_, err := admin.GetRules(withToken(ctx, decideSecret), &nudgev1.GetRulesRequest{})
			return err
		}, "GetRules", codes.PermissionDenied, "WARN", "decider"},
		{"no token", func(ctx context.Context) error {
			_, err := h.profiles.GetProfile(ctx, &nudgev1.GetProfileRequest{UserId: "u1"})
			return err
		}, "GetProfile", codes.Unauthenticated, "WARN", ""},
		{"stream", func(ctx context.Context) error {
			stream, err := h.ingest.Stream(withToken(ctx, ingestSecret))
			if err != nil {
				return err
			}
			if err := stream.CloseSend(); err != nil {
				return err
			}
			_, err = stream.Recv()
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}, "Stream", codes.OK, "DEBUG", "ingester"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if err := tt.call(callCtx(t)); (err == nil) != (tt.code == codes.OK) {
				t.Fatalf("call: %v, want %s", err, tt.code)
			}
			e := logs.finished(t, tt.method, tt.code)
			if e["level"] != tt.level {
				t.Errorf("logged at %v, want %s", e["level"], tt.level)
			}
			if id, _ := e["request_id"].(string); !randomRequestID.MatchString(id) {
				t.Errorf("request_id = %v", e["request_id"])
			}
			if got, _ := e["token"].(string); got != tt.token {
				t.Errorf("token = %q, want %q", got, tt.token)
			}
			if _, ok := e["trace_id"]; ok {
				t.Errorf("trace_id %v without a span", e["trace_id"])
			}
			for k := range e {
				if strings.Contains(k, "content") || strings.Contains(k, "payload") {
					t.Errorf("payload logged: %s", k)
				}
			}
		})
	}
	for _, secret := range []string{limitedSecret, decideSecret, ingestSecret} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("a secret is in the log:\n%s", logs.String())
		}
	}
}

// spanContext puts a valid span context in every call's context, as an
// OpenTelemetry stats handler would.
type spanContext struct{ sc trace.SpanContext }

func (s spanContext) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context {
	return trace.ContextWithSpanContext(ctx, s.sc)
}
func (spanContext) HandleRPC(context.Context, stats.RPCStats) {}
func (spanContext) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (spanContext) HandleConn(context.Context, stats.ConnStats) {}

func TestCallLogTraceID(t *testing.T) {
	var logs logBuffer
	srv, err := server.New(okStore(), testRules(t), server.Config{Now: clock, Logger: logs.logger()})
	if err != nil {
		t.Fatal(err)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
	})
	dialer := serve(t, srv, grpc.StatsHandler(spanContext{sc}))
	conn, err := grpc.NewClient("passthrough:///bufconn", grpc.WithContextDialer(dialer), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	if _, err := nudgev1.NewAdminServiceClient(conn).GetRules(callCtx(t), &nudgev1.GetRulesRequest{}); err != nil {
		t.Fatal(err)
	}
	if got := logs.finished(t, "GetRules", codes.OK)["trace_id"]; got != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("trace_id = %v", got)
	}
}

// TestUserIDsNotLogged: with debug logging, a user id reaches the log
// only with LogUserIDs; otherwise lines that name a user (here: a store
// failure's message) carry its keyed hash.
func TestUserIDsNotLogged(t *testing.T) {
	const user = "alice-secret-42"
	for _, logIDs := range []bool{false, true} {
		name := "hashed"
		if logIDs {
			name = "LogUserIDs"
		}
		t.Run(name, func(t *testing.T) {
			mr := miniredis.RunT(t)
			rdb := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
			t.Cleanup(func() { _ = rdb.Close() })
			store := redisstore.New(rdb, redisstore.Options{Now: clock, MaxErrorRetries: -1})
			var logs logBuffer
			h := start(t, store, server.Config{Logger: logs.logger(), LogUserIDs: logIDs})

			publish(t, h, ev("e1", user, "view", "phones", now), ev("e2", user, "view", "phones", now))
			resp, err := h.decide.GetDecision(callCtx(t), &nudgev1.GetDecisionRequest{UserId: user, Channel: "sms", Explain: true})
			if err != nil || resp.GetDecision().GetOffer().GetId() != "phones-coupon" {
				t.Fatalf("GetDecision: %v, %v", resp, err)
			}
			if strings.Contains(logs.String(), user) {
				t.Fatalf("the user id is in the log of successful calls:\n%s", logs.String())
			}

			mr.Close() // the store fails, naming the user
			_, err = h.ingest.Publish(callCtx(t), &nudgev1.PublishRequest{Events: []*nudgev1.Event{ev("e3", user, "view", "", now)}})
			if logIDs {
				wantCode(t, err, codes.Unavailable, user)
			} else { // not even the caller: the status also goes into RPC spans
				wantCode(t, err, codes.Unavailable, "user h:")
			}
			line := logs.finished(t, "Publish", codes.Unavailable)
			logged, _ := line["grpc.error"].(string)
			switch {
			case logIDs && !strings.Contains(logged, `user "`+user+`"`):
				t.Errorf("grpc.error %q: want the user id in clear", logged)
			case !logIDs && (strings.Contains(logs.String(), user) || !regexp.MustCompile(`user h:[0-9a-f]{16}: `).MatchString(logged)):
				t.Errorf("grpc.error %q: want the user's hash and never the id; log:\n%s", logged, logs.String())
			}
		})
	}
}
