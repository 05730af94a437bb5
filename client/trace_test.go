package client_test

import (
	"context"
	"net"
	"testing"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/nudge-dm/nudge/client"
	nudgev1 "github.com/nudge-dm/nudge/proto/nudge/v1"
)

// decideStub answers every GetDecision with an empty decision.
type decideStub struct {
	nudgev1.UnimplementedDecisionServiceServer
}

func (decideStub) GetDecision(context.Context, *nudgev1.GetDecisionRequest) (*nudgev1.GetDecisionResponse, error) {
	return &nudgev1.GetDecisionResponse{Decision: &nudgev1.Decision{}}, nil
}

// tracedServer serves decideStub on a loopback port with the otelgrpc
// server handler, and returns its address, the recorder of its spans and a
// graceful stop, after which every server span has ended (a server span
// ends after the client has its answer).
func tracedServer(t *testing.T) (string, *tracetest.SpanRecorder, func()) {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	g := grpc.NewServer(grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp), otelgrpc.WithPropagators(propagation.TraceContext{}),
	)))
	nudgev1.RegisterDecisionServiceServer(g, decideStub{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	t.Cleanup(func() { g.Stop(); <-served })
	return lis.Addr().String(), rec, g.GracefulStop
}

// TestDialPropagatesTraceContext checks that a caller's trace reaches the
// server: through the client's own span with WithTracerProvider, directly
// from the caller's span with the (no-op) global provider.
func TestDialPropagatesTraceContext(t *testing.T) {
	tests := []struct {
		name        string
		clientSpans bool // the client is given the caller's provider
		callerSpan  bool // the call's context holds a span
	}{
		{"client tracer provider", true, true},
		{"global no-op provider", false, true},
		{"no span in the context", false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, serverSpans, stop := tracedServer(t)
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			var opts []client.Option
			if tt.clientSpans {
				opts = append(opts, client.WithTracerProvider(tp))
			}
			c, err := client.Dial(addr, opts...)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()

			ctx := t.Context()
			var caller trace.Span
			if tt.callerSpan {
				ctx, caller = tp.Tracer("test").Start(ctx, "caller")
			}
			if _, err := c.Decide(ctx, "u1", "sms"); err != nil {
				t.Fatalf("Decide: %v", err)
			}
			if caller != nil {
				caller.End()
			}
			_ = c.Close()
			stop()

			ended := serverSpans.Ended()
			if len(ended) != 1 {
				t.Fatalf("%d server spans, want 1", len(ended))
			}
			server := ended[0]
			if !tt.callerSpan {
				if server.Parent().IsValid() {
					t.Errorf("server span has parent %v without a caller span", server.Parent())
				}
				return
			}
			// The server span's parent: the client's span, or the caller's
			// when the client makes none.
			want := caller.SpanContext()
			if tt.clientSpans {
				var clientSpan sdktrace.ReadOnlySpan
				for _, s := range rec.Ended() {
					if s.SpanKind() == trace.SpanKindClient {
						clientSpan = s
					}
				}
				if clientSpan == nil || clientSpan.Name() != "nudge.v1.DecisionService/GetDecision" ||
					clientSpan.Parent().SpanID() != caller.SpanContext().SpanID() {
					t.Fatalf("no client span GetDecision under the caller's span among %d spans", len(rec.Ended()))
				}
				want = clientSpan.SpanContext()
			}
			if got := server.SpanContext().TraceID(); got != want.TraceID() {
				t.Errorf("server span in trace %s, want the caller's %s", got, want.TraceID())
			}
			if p := server.Parent(); !p.IsRemote() || p.SpanID() != want.SpanID() {
				t.Errorf("server span's parent %s (remote %v), want %s", p.SpanID(), p.IsRemote(), want.SpanID())
			}
		})
	}
}
