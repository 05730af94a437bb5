package integration

import (
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/nudge-dm/nudge/client"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/examples"
	"github.com/nudge-dm/nudge/internal/redistest"
	"github.com/nudge-dm/nudge/profile/redisstore"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
	"github.com/nudge-dm/nudge/server"
)

// startTracedServer starts a nudge server on its own redis-server whose
// gRPC server and store both trace to tp, as nudged does with tracing on,
// and returns its address and a graceful stop, after which every server
// span has ended (a server span ends after the client has its answer).
// The harness's startServer takes no gRPC server options.
func startTracedServer(t *testing.T, tp trace.TracerProvider) (addr string, stop func()) {
	t.Helper()
	rdb := redis.NewClient(nudgedRedisOptions(t, redistest.Start(t).Addr))
	t.Cleanup(func() { _ = rdb.Close() })
	rules, err := decision.Parse(examples.RulesName, examples.Rules)
	if err != nil {
		t.Fatal(err)
	}
	store := redisstore.New(rdb, redisstore.Options{TracerProvider: tp})
	srv, err := server.New(store, decision.NewLive(rules, examples.RulesName), server.Config{
		Logger:        slog.New(slog.NewTextHandler(io.Discard, nil)),
		DefaultBudget: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	g := srv.NewGRPCServer(grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(propagation.TraceContext{}),
	)))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	t.Cleanup(func() { g.Stop(); <-served })
	return lis.Addr().String(), g.GracefulStop
}

// TestTracingEndToEnd follows one caller's trace through the client, the
// server's RPC spans and the store's spans: one trace, each span the child
// of the one above it.
func TestTracingEndToEnd(t *testing.T) {
	serverRec := tracetest.NewSpanRecorder()
	serverTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(serverRec))
	addr, stop := startTracedServer(t, serverTP)
	clientRec := tracetest.NewSpanRecorder()
	clientTP := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(clientRec))
	c, err := client.Dial(addr, client.WithTracerProvider(clientTP))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	ctx, caller := clientTP.Tracer("test").Start(ctxT(t), "caller")
	const user = "traced-user"
	resp, err := nudgev1.NewIngestServiceClient(c.Conn()).Publish(ctx, &nudgev1.PublishRequest{Events: []*nudgev1.Event{ev(user, "view", "phones", time.Minute)}})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	wantStatus(t, resp.Results[0], nudgev1.EventStatus_EVENT_STATUS_APPLIED)
	if _, err := c.Decide(ctx, user, "sms"); err != nil {
		t.Fatalf("Decide: %v", err)
	}
	caller.End()
	traceID := caller.SpanContext().TraceID()
	_ = c.Close()
	stop()

	clientSpans := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range clientRec.Ended() {
		clientSpans[s.Name()] = s
	}
	serverSpans := map[string]sdktrace.ReadOnlySpan{}
	for _, s := range serverRec.Ended() {
		serverSpans[s.Name()] = s
		if s.SpanContext().TraceID() != traceID {
			t.Errorf("server span %s in trace %s, want the caller's %s", s.Name(), s.SpanContext().TraceID(), traceID)
		}
	}
	// Each RPC: caller -> client span -> server span -> store span.
	for _, tt := range []struct{ rpc, store string }{
		{"nudge.v1.IngestService/Publish", "nudge.profile.transaction"},
		{"nudge.v1.DecisionService/GetDecision", "nudge.profile.read"},
	} {
		t.Run(tt.rpc, func(t *testing.T) {
			cs, ss, st := clientSpans[tt.rpc], serverSpans[tt.rpc], serverSpans[tt.store]
			if cs == nil || ss == nil || st == nil {
				t.Fatalf("client span %v, server span %v, store span %s %v: want all three", cs != nil, ss != nil, tt.store, st != nil)
			}
			if cs.Parent().SpanID() != caller.SpanContext().SpanID() {
				t.Errorf("client span's parent %s, want the caller %s", cs.Parent().SpanID(), caller.SpanContext().SpanID())
			}
			if ss.SpanKind() != trace.SpanKindServer || !ss.Parent().IsRemote() || ss.Parent().SpanID() != cs.SpanContext().SpanID() {
				t.Errorf("server span (kind %v) has parent %s (remote %v), want the client span %s",
					ss.SpanKind(), ss.Parent().SpanID(), ss.Parent().IsRemote(), cs.SpanContext().SpanID())
			}
			if st.Parent().SpanID() != ss.SpanContext().SpanID() {
				t.Errorf("%s's parent %s, want the server span %s", tt.store, st.Parent().SpanID(), ss.SpanContext().SpanID())
			}
		})
	}
}
