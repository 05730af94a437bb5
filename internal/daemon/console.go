package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"net/http"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/test/bufconn"

	"github.com/nudge-dm/nudge/audit"
	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/delivery"
	"github.com/nudge-dm/nudge/internal/console"
	"github.com/nudge-dm/nudge/internal/version"
	"github.com/nudge-dm/nudge/server"
)

// webConsole is the console and what it runs on: an in-process gRPC
// server of the same server.Server (same handlers and interceptors, so
// the console's calls are authorized, validated, limited and logged as
// any caller's), a connection to it, and the metrics sampler of the
// overview.
type webConsole struct {
	handler *console.Console
	grpc    *grpc.Server
	lis     *bufconn.Listener
	conn    *grpc.ClientConn
	sampler *console.Sampler
}

// newWebConsole builds the console of srv. The in-process server has no
// TLS (its connection never leaves the process) and the stats handler
// of the others, so the console's calls appear in rpc.server metrics.
func newWebConsole(cfg Config, srv *server.Server, rules *decision.Live, reader *sdkmetric.ManualReader, outbox *delivery.Outbox, auditLog *audit.Log, opts []grpc.ServerOption, log *slog.Logger) (*webConsole, error) {
	c := &webConsole{grpc: srv.NewGRPCServer(opts...), lis: bufconn.Listen(1 << 20)}
	conn, err := grpc.NewClient("passthrough:///nudged-console",
		grpc.WithContextDialer(func(ctx context.Context, _ string) (net.Conn, error) { return c.lis.DialContext(ctx) }),
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("console: %w", err)
	}
	c.conn = conn
	c.sampler = console.NewSampler(reader.Collect, console.SamplerOptions{
		Campaigns: func() []decision.Campaign { return rules.Rules().Campaigns() },
	})
	c.handler, err = console.New(console.Config{
		Auth:        srv,
		Conn:        conn,
		Sampler:     c.sampler,
		Campaigns:   func() []decision.Campaign { return rules.Rules().Campaigns() },
		Actions:     outbox,
		Decisions:   auditLog,
		Version:     version.String("nudged"),
		SessionTTL:  cfg.HTTP.Console.SessionTTL,
		IdleTimeout: cfg.HTTP.Console.IdleTimeout,
		Log:         log.With("part", "console"),
	})
	if err != nil {
		_ = conn.Close()
		return nil, err
	}
	return c, nil
}

// mount serves the console under /console/ beside h.
func (c *webConsole) mount(h http.Handler) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/console/", c.handler)
	mux.Handle("/console", c.handler)
	mux.Handle("/", h)
	return mux
}

// run serves the in-process gRPC server and samples the metrics until ctx
// ends; stopped after the HTTP listener, whose console pages call it.
func (c *webConsole) run(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- c.grpc.Serve(c.lis) }()
	sctx, stopSampling := context.WithCancel(ctx)
	sampled := make(chan struct{})
	go func() {
		defer close(sampled)
		_ = c.sampler.Run(sctx) // nil at its end; its reader is registered
	}()
	var err error
	select {
	case err = <-errc:
		err = fmt.Errorf("console: in-process gRPC server: %w", err)
	case <-ctx.Done():
		c.grpc.Stop() // unary calls only, and the HTTP listener has drained
		<-errc
	}
	_ = c.conn.Close()
	stopSampling()
	<-sampled
	return err
}
