package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"runtime/debug"
	"strings"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc/filters"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
)

// TracingConfig configures trace export: OTLP over gRPC to a collector
// (the OpenTelemetry Collector, Jaeger, Tempo...).
type TracingConfig struct {
	// Endpoint is the OTLP/gRPC collector address (host:port). Empty:
	// tracing off, at no cost (no spans are made, nothing is sent).
	Endpoint string `yaml:"endpoint"`
	// Insecure sends spans in plaintext, for a collector on loopback or a
	// sidecar. Default false: TLS with the system roots.
	Insecure bool `yaml:"insecure"`
	// SampleRatio is the share of new traces kept, in [0, 1]. Sampling is
	// parent-based: a call from a caller whose trace is sampled is always
	// traced, one from a caller whose trace is not never is; the ratio
	// decides for calls that start a trace. Zero means the default, 1 (every
	// trace); a tiny ratio such as 1e-9 keeps only the callers' traces.
	SampleRatio float64 `yaml:"sample_ratio"`
	// ServiceName is the service.name of the spans. Default "nudged".
	ServiceName string `yaml:"service_name"`
}

// validate reports a setting that cannot work, naming it by its YAML key.
func (c TracingConfig) validate() error {
	if c.SampleRatio < 0 || c.SampleRatio > 1 {
		return fmt.Errorf("tracing.sample_ratio: %v is not between 0 and 1", c.SampleRatio)
	}
	if c.Endpoint != "" {
		if strings.Contains(c.Endpoint, "://") {
			return fmt.Errorf("tracing.endpoint: %q: want host:port without a scheme (tracing.insecure chooses plaintext)", c.Endpoint)
		}
		if _, _, err := net.SplitHostPort(c.Endpoint); err != nil {
			return fmt.Errorf("tracing.endpoint: %q is not host:port: %w", c.Endpoint, err)
		}
	}
	return nil
}

// startTracing returns the tracer provider nudged's spans go to, and the
// function that flushes and stops it. Without an endpoint the provider is
// a no-op and so is the shutdown. Otherwise spans are batched to the
// collector with W3C trace context; export failures are logged (at most
// as often as a batch is sent), never returned to a call.
func startTracing(ctx context.Context, cfg TracingConfig, log *slog.Logger) (trace.TracerProvider, func(context.Context) error, error) {
	if err := cfg.validate(); err != nil {
		return nil, nil, err
	}
	if cfg.Endpoint == "" {
		return noop.NewTracerProvider(), func(context.Context) error { return nil }, nil
	}
	if cfg.SampleRatio == 0 {
		cfg.SampleRatio = 1
	}
	if cfg.ServiceName == "" {
		cfg.ServiceName = "nudged"
	}
	attrs := []resource.Option{
		resource.WithFromEnv(), // OTEL_RESOURCE_ATTRIBUTES, e.g. deployment.environment.name
		resource.WithTelemetrySDK(),
		resource.WithHost(), // tells replicas apart
		resource.WithSchemaURL(semconv.SchemaURL),
		resource.WithAttributes(semconv.ServiceName(cfg.ServiceName)),
	}
	if v := moduleVersion(); v != "" {
		attrs = append(attrs, resource.WithAttributes(semconv.ServiceVersion(v)))
	}
	res, err := resource.New(ctx, attrs...)
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		return nil, nil, fmt.Errorf("tracing: resource: %w", err)
	}
	opts := []otlptracegrpc.Option{otlptracegrpc.WithEndpoint(cfg.Endpoint)}
	if cfg.Insecure {
		opts = append(opts, otlptracegrpc.WithInsecure())
	}
	// New does not wait for the collector: a collector that is down loses
	// spans, it does not stop nudged.
	exp, err := otlptracegrpc.New(ctx, opts...)
	if err != nil {
		return nil, nil, fmt.Errorf("tracing: exporter to %s: %w", cfg.Endpoint, err)
	}
	tp := sdktrace.NewTracerProvider(
		sdktrace.WithBatcher(exp),
		sdktrace.WithResource(res),
		sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(cfg.SampleRatio))),
	)
	// The SDK reports export failures to the global handler, which would
	// print them to stderr outside the structured log.
	otel.SetErrorHandler(otel.ErrorHandlerFunc(func(err error) {
		log.Warn("tracing: exporting spans failed", "endpoint", cfg.Endpoint, "err", err)
	}))
	log.Info("tracing on", "endpoint", cfg.Endpoint, "insecure", cfg.Insecure, "sample_ratio", cfg.SampleRatio, "service_name", cfg.ServiceName)
	return tp, tp.Shutdown, nil
}

// moduleVersion is nudge's version as the Go toolchain recorded it ("" for
// a development build).
func moduleVersion() string {
	bi, ok := debug.ReadBuildInfo()
	if !ok || bi.Main.Version == "(devel)" {
		return ""
	}
	return bi.Main.Version
}

// grpcServerStats is the gRPC server option that makes a span per call
// (a child of the caller's span when the call carries a W3C traceparent)
// and the RPC duration and status metrics. Health checks are left out of
// both: a probe every few seconds would drown the rest. A nil provider
// means a no-op one, never the global.
func grpcServerStats(tp trace.TracerProvider, mp metric.MeterProvider) grpc.ServerOption {
	if tp == nil {
		tp = noop.NewTracerProvider()
	}
	if mp == nil {
		mp = metricnoop.NewMeterProvider()
	}
	return grpc.StatsHandler(otelgrpc.NewServerHandler(
		otelgrpc.WithTracerProvider(tp),
		otelgrpc.WithMeterProvider(mp),
		otelgrpc.WithPropagators(propagation.TraceContext{}),
		otelgrpc.WithFilter(filters.Not(filters.HealthCheck())),
	))
}
