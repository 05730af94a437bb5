package webdriver

import (
	"context"
	"fmt"
	"strings"
	"time"
)

// waitPoll is how often WaitFor evaluates its condition.
const waitPoll = 50 * time.Millisecond

// WaitFor evaluates cond every 50 ms until it returns true, for at most
// timeout (or until ctx ends). An error from cond does not stop the wait
// (an element not there yet is the usual reason to wait); the last one is
// kept. On timeout the error names what and wraps both ErrWaitTimeout and
// cond's last error. cond runs at least once; a cond that blocks delays
// the verdict, so bound its commands with ctx.
func WaitFor(ctx context.Context, timeout time.Duration, what string, cond func() (bool, error)) error {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(waitPoll)
	defer tick.Stop()
	for {
		ok, err := cond()
		if ok {
			return nil
		}
		if time.Now().After(deadline) {
			if err != nil {
				return fmt.Errorf("webdriver: waiting for %s: %w after %v; last error: %w", what, ErrWaitTimeout, timeout, err)
			}
			return fmt.Errorf("webdriver: waiting for %s: %w after %v (condition false, no error)", what, ErrWaitTimeout, timeout)
		}
		select {
		case <-ctx.Done():
			if err != nil {
				return fmt.Errorf("webdriver: waiting for %s: %w; last error: %w", what, ctx.Err(), err)
			}
			return fmt.Errorf("webdriver: waiting for %s: %w", what, ctx.Err())
		case <-tick.C:
		}
	}
}

// WaitText waits, for at most timeout, until an element matching css has a
// rendered text (Element.Text) containing substring, and returns that
// element. The timeout error lists the texts last seen.
func (s *Session) WaitText(ctx context.Context, css, substring string, timeout time.Duration) (Element, error) {
	var found Element
	what := fmt.Sprintf("an element %q with text containing %q", css, substring)
	err := WaitFor(ctx, timeout, what, func() (bool, error) {
		els, err := s.FindAll(ctx, css)
		if err != nil {
			return false, err
		}
		if len(els) == 0 {
			return false, fmt.Errorf("no element matches %q", css)
		}
		texts := make([]string, 0, len(els))
		for _, el := range els {
			t, err := el.Text(ctx)
			if err != nil {
				return false, err // stale: the page changed under us, look again
			}
			if strings.Contains(t, substring) {
				found = el
				return true, nil
			}
			texts = append(texts, t)
		}
		return false, fmt.Errorf("texts of %d matching elements: %q", len(els), texts)
	})
	return found, err
}
