package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/nudge-dm/nudge/decision"
	"github.com/nudge-dm/nudge/server"
)

// actors are the long-running parts of nudged, each a named function that
// runs until its context ends (or fails). run starts them in the order
// they were added and stops them in the reverse order, each stopped and
// joined before the one added before it is: so the gRPC server, added last,
// drains before the audit writer, added first, flushes. This is the only
// place nudged starts a goroutine that outlives a call; a test checks that
// none is left once Run returns.
type actors struct {
	log  *slog.Logger
	list []actor
}

type actor struct {
	name string
	run  func(ctx context.Context) error
}

// add registers an actor; run must return once ctx ends.
func (a *actors) add(name string, run func(ctx context.Context) error) {
	a.list = append(a.list, actor{name, run})
}

// run runs every actor until ctx ends or one of them returns, then stops
// them all, last added first. It returns the error of the actor that
// stopped on its own (an actor that returns nil before ctx ends is an
// error too: nudged is incomplete without it), or nil when ctx ended.
func (a *actors) run(ctx context.Context) error {
	type stopped struct {
		name string
		err  error
	}
	ended := make(chan stopped, len(a.list))
	cancels := make([]context.CancelFunc, len(a.list))
	done := make([]chan struct{}, len(a.list))
	for i, act := range a.list {
		actx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		cancels[i], done[i] = cancel, make(chan struct{})
		go func() {
			defer close(done[i])
			err := act.run(actx)
			if actx.Err() == nil {
				if err == nil {
					err = errors.New("stopped unasked")
				}
				ended <- stopped{act.name, err}
			}
		}()
	}
	var err error
	select {
	case <-ctx.Done():
	case s := <-ended:
		err = fmt.Errorf("%s: %w", s.name, s.err)
		a.log.Error("a part of nudged stopped; shutting down", "actor", s.name, "err", s.err)
	}
	for i := len(a.list) - 1; i >= 0; i-- {
		cancels[i]()
		<-done[i]
		a.log.Debug("stopped", "actor", a.list[i].name)
	}
	return err
}

// serveGRPC is the "grpc" actor: it serves g on lis, calls ready (if not
// nil) once it accepts calls, and when ctx ends drains srv and stops g,
// waiting at most drain for calls to finish.
func serveGRPC(ctx context.Context, srv *server.Server, g *grpc.Server, lis net.Listener, drain time.Duration, log *slog.Logger, ready func(net.Addr)) error {
	served := make(chan error, 1)
	go func() { served <- g.Serve(lis) }()
	if ready != nil {
		ready(lis.Addr())
	}
	select {
	case err := <-served:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down", "drain_timeout", drain)
	srv.Shutdown(g, drain)
	if err := <-served; err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}

// rulesReloads are the "rules watcher" and "SIGHUP" actors: both reload the
// rules file and report the outcome (log and metric) the same way.
type rulesReloads struct {
	rules   *decision.Live
	metrics *daemonMetrics
	log     *slog.Logger
}

func (r rulesReloads) report(ctx context.Context, changed bool, err error) {
	r.metrics.reloaded(ctx, changed, err)
	version := r.rules.Rules().Version()
	switch {
	case err != nil:
		r.log.Error("rules reload refused; the previous rules keep serving", "version", version, "err", err)
	case changed:
		r.log.Info("rules reloaded", "version", version)
	default:
		r.log.Info("rules unchanged", "version", version)
	}
}

// watch checks the file every interval (decision.Live.Watch), when there is
// a file and an interval; otherwise it only waits.
func (r rulesReloads) watch(file bool, interval time.Duration) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		if !file || interval <= 0 {
			<-ctx.Done()
			return nil
		}
		r.rules.Watch(ctx, interval, func(changed bool, err error) { r.report(ctx, changed, err) })
		return nil
	}
}

// onSIGHUP reloads the rules file at once on each SIGHUP.
func (r rulesReloads) onSIGHUP(hup <-chan os.Signal) func(ctx context.Context) error {
	return func(ctx context.Context) error {
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-hup:
				changed, err := r.rules.Reload()
				r.report(ctx, changed, err)
			}
		}
	}
}
