package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
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
