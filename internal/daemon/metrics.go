package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// metricsEndpoint serves /metrics (Prometheus text format) from an
// OpenTelemetry meter provider.
type metricsEndpoint struct {
	meter    metric.Meter
	provider *sdkmetric.MeterProvider
	srv      *http.Server
	lis      net.Listener
}

// startMetrics starts the /metrics listener, or returns a no-op meter when
// addr is empty.
func startMetrics(addr string, log *slog.Logger) (*metricsEndpoint, error) {
	if addr == "" {
		return &metricsEndpoint{meter: noop.NewMeterProvider().Meter("")}, nil
	}
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg), otelprom.WithoutScopeInfo())
	if err != nil {
		return nil, fmt.Errorf("metrics exporter: %w", err)
	}
	provider := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("metrics listen on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics listener failed", "err", err)
		}
	}()
	log.Info("metrics serving", "addr", "http://"+lis.Addr().String()+"/metrics")
	return &metricsEndpoint{
		meter:    provider.Meter("github.com/nudge-dm/nudge"),
		provider: provider,
		srv:      srv,
		lis:      lis,
	}, nil
}

func (m *metricsEndpoint) close() {
	if m.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = m.srv.Shutdown(ctx)
	_ = m.provider.Shutdown(ctx)
}
