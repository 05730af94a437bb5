package decision

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"
)

// Live holds the rules in force and replaces them when their file changes.
// A file that does not compile is refused: the previous rules keep serving.
// It is safe for concurrent use.
type Live struct {
	path   string // empty: fixed rules, no reload
	source string
	cur    atomic.Pointer[loaded]
	data   atomic.Pointer[[]byte]
}

type loaded struct {
	rules *Rules
	at    time.Time
}

// NewLive returns fixed rules, never reloaded; source names where they came
// from.
func NewLive(r *Rules, source string) *Live {
	l := &Live{source: source}
	l.cur.Store(&loaded{rules: r, at: time.Now()})
	return l
}

// LoadLive loads the rules file at path.
func LoadLive(path string) (*Live, error) {
	l := &Live{path: path, source: path}
	if _, err := l.Reload(); err != nil {
		return nil, err
	}
	return l, nil
}

// Rules returns the rules in force.
func (l *Live) Rules() *Rules { return l.cur.Load().rules }

// LoadedAt returns when the rules in force were loaded.
func (l *Live) LoadedAt() time.Time { return l.cur.Load().at }

// Source names the file the rules came from.
func (l *Live) Source() string { return l.source }

// Reload reads the file again and, if it changed and compiles, puts it in
// force. It reports whether the rules changed.
func (l *Live) Reload() (bool, error) {
	if l.path == "" {
		return false, nil
	}
	data, err := os.ReadFile(l.path)
	if err != nil {
		return false, fmt.Errorf("read rules: %w", err)
	}
	if old := l.data.Load(); old != nil && bytes.Equal(*old, data) {
		return false, nil
	}
	r, err := Parse(l.path, data)
	if err != nil {
		return false, err
	}
	l.cur.Store(&loaded{rules: r, at: time.Now()})
	l.data.Store(&data)
	return true, nil
}

// Watch reloads the file every interval until ctx ends, calling report
// after each reload that changed the rules or failed.
func (l *Live) Watch(ctx context.Context, interval time.Duration, report func(changed bool, err error)) {
	if l.path == "" || interval <= 0 {
		return
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if changed, err := l.Reload(); changed || err != nil {
				report(changed, err)
			}
		}
	}
}
