package daemon

import (
	"context"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	collectortracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"
)

// fakeCollector is an OTLP/gRPC trace collector on a loopback port that
// keeps what it receives.
type fakeCollector struct {
	collectortracepb.UnimplementedTraceServiceServer
	addr  string
	mu    sync.Mutex
	spans []*tracepb.ResourceSpans
}

func startCollector(t *testing.T) *fakeCollector {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &fakeCollector{addr: lis.Addr().String()}
	g := grpc.NewServer()
	collectortracepb.RegisterTraceServiceServer(g, c)
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	t.Cleanup(func() { g.Stop(); <-served })
	return c
}

func (c *fakeCollector) Export(_ context.Context, req *collectortracepb.ExportTraceServiceRequest) (*collectortracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.spans = append(c.spans, req.GetResourceSpans()...)
	return &collectortracepb.ExportTraceServiceResponse{}, nil
}

// received returns the spans received, by name, with their resource's
// service.name.
func (c *fakeCollector) received() map[string]string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for _, rs := range c.spans {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, s := range ss.GetSpans() {
				out[s.GetName()] = service
			}
		}
	}
	return out
}

func discardLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestStartTracingExports(t *testing.T) {
	tests := []struct {
		name        string
		serviceName string
		want        string
	}{
		{"default service name", "", "nudged"},
		{"service name set", "nudged-eu", "nudged-eu"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := startCollector(t)
			tp, shutdown, err := startTracing(t.Context(), TracingConfig{Endpoint: c.addr, Insecure: true, ServiceName: tt.serviceName}, discardLog())
			if err != nil {
				t.Fatal(err)
			}
			_, span := tp.Tracer("test").Start(t.Context(), "exported-span")
			if !span.IsRecording() {
				t.Error("a root span is not sampled with the default ratio 1")
			}
			span.End()
			if err := shutdown(t.Context()); err != nil {
				t.Fatalf("shutdown: %v", err)
			}
			got := c.received()
			if service, ok := got["exported-span"]; !ok || service != tt.want {
				t.Errorf("collector received %v, want exported-span of service %q", got, tt.want)
			}
		})
	}
}

// TestStartTracingSampling checks that sampling follows the caller: a
// sampled caller's trace is kept whatever the ratio, an unsampled one's
// never is.
func TestStartTracingSampling(t *testing.T) {
	remote := func(sampled bool) context.Context {
		var flags trace.TraceFlags
		if sampled {
			flags = trace.FlagsSampled
		}
		return trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
			TraceID:    trace.TraceID{1, 2, 3},
			SpanID:     trace.SpanID{4, 5, 6},
			TraceFlags: flags,
			Remote:     true,
		}))
	}
	tests := []struct {
		name   string
		ratio  float64
		parent context.Context
		want   bool
	}{
		{"sampled caller, tiny ratio", 1e-9, remote(true), true},
		{"unsampled caller, ratio 1", 1, remote(false), false},
		{"new trace, default ratio", 0, context.Background(), true},
	}
	c := startCollector(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, shutdown, err := startTracing(t.Context(), TracingConfig{Endpoint: c.addr, Insecure: true, SampleRatio: tt.ratio}, discardLog())
			if err != nil {
				t.Fatal(err)
			}
			defer func() {
				if err := shutdown(t.Context()); err != nil {
					t.Errorf("shutdown: %v", err)
				}
			}()
			_, span := tp.Tracer("test").Start(tt.parent, "s")
			defer span.End()
			if got := span.SpanContext().IsSampled(); got != tt.want {
				t.Errorf("sampled = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestStartTracingOff(t *testing.T) {
	tp, shutdown, err := startTracing(t.Context(), TracingConfig{SampleRatio: 0.5}, discardLog())
	if err != nil {
		t.Fatal(err)
	}
	_, span := tp.Tracer("test").Start(t.Context(), "s")
	if span.IsRecording() {
		t.Error("a span records with tracing off")
	}
	span.End()
	if err := shutdown(t.Context()); err != nil {
		t.Errorf("shutdown: %v", err)
	}
}

func TestTracingConfigInvalid(t *testing.T) {
	tests := []struct {
		name string
		cfg  TracingConfig
		key  string
	}{
		{"negative ratio", TracingConfig{Endpoint: "127.0.0.1:4317", SampleRatio: -0.1}, "tracing.sample_ratio"},
		{"ratio above 1", TracingConfig{SampleRatio: 1.5}, "tracing.sample_ratio"},
		{"endpoint with a scheme", TracingConfig{Endpoint: "http://collector"}, "tracing.endpoint"},
		{"endpoint without a port", TracingConfig{Endpoint: "collector"}, "tracing.endpoint"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tp, _, err := startTracing(t.Context(), tt.cfg, discardLog())
			if err == nil || !strings.HasPrefix(err.Error(), tt.key+":") {
				t.Errorf("startTracing = %v, %v; want an error about %s", tp, err, tt.key)
			}
		})
	}
}

// TestGRPCServerStats serves a call and a health check through the stats
// handler: the call gets a server span in the caller's trace (from its
// traceparent header) and duration metrics; the health check gets neither.
func TestGRPCServerStats(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	g := grpc.NewServer(grpcServerStats(tp, mp), grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
			return err
		}
		return stream.SendMsg(&emptypb.Empty{})
	}))
	healthpb.RegisterHealthServer(g, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { _ = g.Serve(lis); close(served) }()
	defer func() { g.Stop(); <-served }()
	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()

	const traceID = "4bf92f3577b34da6a3ce929d0e0e4736"
	ctx := metadata.AppendToOutgoingContext(t.Context(), "traceparent", "00-"+traceID+"-00f067aa0ba902b7-01")
	if err := conn.Invoke(ctx, "/nudge.v1.Test/Ping", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("call: %v", err)
	}
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("health check: %v", err)
	}
	// A server span ends, and its metrics are recorded, after the client
	// has its answer: once the server stopped gracefully, all are in.
	_ = conn.Close()
	g.GracefulStop()

	var names []string
	for _, s := range rec.Ended() {
		names = append(names, s.Name())
		if strings.Contains(s.Name(), "Health") {
			t.Errorf("health check traced: %s", s.Name())
		}
		if s.Name() == "nudge.v1.Test/Ping" {
			if s.SpanKind() != trace.SpanKindServer || s.SpanContext().TraceID().String() != traceID || !s.Parent().IsRemote() {
				t.Errorf("call span: kind %v, trace %s, parent %v; want a server span in the caller's trace %s",
					s.SpanKind(), s.SpanContext().TraceID(), s.Parent(), traceID)
			}
		}
	}
	if len(names) != 1 {
		t.Errorf("spans %v, want one: nudge.v1.Test/Ping", names)
	}

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	var methods []string
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[float64]); ok && strings.HasPrefix(m.Name, "rpc.server.") {
				for _, dp := range h.DataPoints {
					v, _ := dp.Attributes.Value(attribute.Key("rpc.method"))
					methods = append(methods, m.Name+" "+v.Emit())
				}
			}
		}
	}
	if len(methods) == 0 || strings.Contains(strings.Join(methods, ","), "Health") {
		t.Errorf("server duration metrics %v: want the call's, not the health check's", methods)
	}
}
