package decision

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"sync"
	"sync/atomic"
	"time"
)

// Live holds the rules in force and replaces them when their file changes.
// A file that does not compile, or cannot be read, is refused: the previous
// rules keep serving, and Refused describes the file until one is put in
// force or the file in force is back on disk.
// It is safe for concurrent use.
type Live struct {
	path   string // empty: fixed rules, no reload
	source string
	limits Limits // every reload is held to them
	// mu serialises reloads (Watch and an explicit Reload may race), so a
	// refusal is news to exactly one of them. Readers (Rules, LoadedAt,
	// Refused: the decision and ingest paths) take cur without it, so a
	// reload compiling a large file never holds them up.
	mu  sync.Mutex
	cur atomic.Pointer[loaded]
}

// loaded is one state of a Live, replaced whole so readers see a consistent
// snapshot.
type loaded struct {
	rules   *Rules
	at      time.Time
	data    []byte   // the bytes of the rules in force; nil for fixed rules
	refused *refusal // nil: no file refused since the rules in force
}

// refusal is a Refusal and what identifies the refused file.
type refusal struct {
	Refusal
	unread bool   // the file could not be read: Err is the read error
	data   []byte // the refused bytes, unless unread
}

// Refusal describes the rules file Live last refused: the file on disk that
// is not in force.
type Refusal struct {
	// At is when the file was refused: the first reload that read these
	// bytes (or met this read error). Later reloads of the same bytes do not
	// move it.
	At time.Time
	// Err says why: the read error, or every problem Parse found, joined
	// (each a *RuleError with file and line; it matches ErrInvalidRules).
	Err error
	// Version is the content hash of the refused bytes, as Rules.Version
	// would give it had they compiled; "" when the file could not be read.
	Version string
}

// NewLive returns fixed rules, never reloaded; source names where they came
// from.
func NewLive(r *Rules, source string) *Live {
	l := &Live{source: source}
	l.cur.Store(&loaded{rules: r, at: time.Now()})
	return l
}

// LoadLive loads the rules file at path. Its reloads are held to the same
// limits (WithLimits) as the first load.
func LoadLive(path string, opts ...LoadOption) (*Live, error) {
	cfg := newLoadConfig(opts)
	data, size, err := readBounded(path, cfg.limits.MaxBytes)
	if err != nil {
		return nil, fmt.Errorf("read rules: %w", err)
	}
	r, err := parse(path, data, size, cfg.limits, nil)
	if err != nil {
		return nil, err
	}
	l := &Live{path: path, source: path, limits: cfg.limits}
	l.cur.Store(&loaded{rules: r, at: time.Now(), data: data})
	return l, nil
}

// Rules returns the rules in force.
func (l *Live) Rules() *Rules { return l.cur.Load().rules }

// LoadedAt returns when the rules in force were loaded.
func (l *Live) LoadedAt() time.Time { return l.cur.Load().at }

// Source names the file the rules came from.
func (l *Live) Source() string { return l.source }

// Limits returns the limits every reload is held to (LoadLive's
// WithLimits; zero fields, all of them for NewLive, mean their defaults),
// so that other files can be held to them too (AdminService.TestRules).
func (l *Live) Limits() Limits { return l.limits }

// Refused returns the last refused rules file, if the file on disk is not
// the one in force because it was refused. It is cleared when a new file is
// put in force, or when a reload finds the file in force back on disk.
func (l *Live) Refused() (Refusal, bool) {
	r := l.cur.Load().refused
	if r == nil {
		return Refusal{}, false
	}
	return r.Refusal, true
}

// Reload reads the file again and, if it changed and compiles, puts it in
// force. It reports whether the rules changed. A file that cannot be read
// or does not compile is refused (see Refused) and its error returned.
//
// A file whose bytes were already refused is not parsed again, but Reload
// still returns its refusal's error, unchanged: an explicit reload (SIGHUP)
// is an operator asking, and the answer is that the file on disk is still
// not in force. Watch, which polls, reports a refusal only once.
func (l *Live) Reload() (bool, error) {
	changed, _, err := l.reload()
	return changed, err
}

// reload is Reload, also saying whether the outcome is news: the rules
// changed, or a file was refused that differs from the standing refusal
// (other bytes, or another read error). A reload that finds the refused
// file again, or the file in force unchanged, is not news.
func (l *Live) reload() (changed, news bool, err error) {
	if l.path == "" {
		return false, false, nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	cur := l.cur.Load()
	// A file over the size limit reads as its first MaxBytes+1 bytes:
	// enough for Parse to refuse it, and to tell it from the file in force.
	data, size, err := readBounded(l.path, l.limits.MaxBytes)
	if err != nil {
		err = fmt.Errorf("read rules: %w", err)
		// The same text is the same error (the path and the errno
		// message): a missing file stays missing without a new report.
		// Only equality is asked of the text, never its meaning.
		if r := cur.refused; r != nil && r.unread && r.Err.Error() == err.Error() {
			return false, false, r.Err
		}
		l.refuse(cur, nil, err)
		return false, true, err
	}
	if bytes.Equal(cur.data, data) {
		if cur.refused != nil {
			// The file in force is back: nothing on disk is refused.
			l.cur.Store(&loaded{rules: cur.rules, at: cur.at, data: cur.data})
		}
		return false, false, nil
	}
	if r := cur.refused; r != nil && !r.unread && bytes.Equal(r.data, data) {
		return false, false, r.Err
	}
	rules, err := parse(l.path, data, size, l.limits, (&pacer{since: time.Now()}).pace)
	if err != nil {
		l.refuse(cur, data, err)
		return false, true, err
	}
	l.cur.Store(&loaded{rules: rules, at: time.Now(), data: data})
	return true, true, nil
}

// refuse records that data (nil: the file could not be read) was refused
// for err, keeping the rules of cur in force. l.mu must be held.
func (l *Live) refuse(cur *loaded, data []byte, err error) {
	r := &refusal{Refusal: Refusal{At: time.Now(), Err: err}, unread: data == nil, data: data}
	if !r.unread {
		r.Version = contentVersion(data)
	}
	l.cur.Store(&loaded{rules: cur.rules, at: cur.at, data: cur.data, refused: r})
}

// contentVersion is the hash Parse gives Rules.Version, for content that
// did not compile, so an operator can tell which file was refused.
func contentVersion(data []byte) string {
	sum := sha256.Sum256(data)
	return hex.EncodeToString(sum[:6])
}

// Watch reloads the file every interval until ctx ends, calling report
// after each reload that changed the rules or refused a file not refused
// before. A refused file left on disk is reported once, not at every
// interval; it stays visible through Refused.
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
			if changed, news, err := l.reload(); news {
				report(changed, err)
			}
		}
	}
}

// reloadSlice is how long a reload compiles before it rests as long.
const reloadSlice = 5 * time.Millisecond

// pacer keeps a reload's compilation to about half of one CPU: after each
// rule, once it has compiled for reloadSlice or more since it last rested,
// it sleeps as long as it ran. The rules in force keep serving meanwhile,
// but on a small machine a full-speed compile competes with decisions for
// CPU and its garbage for the collector: a reload of the largest file the
// default limits allow (about 3 s of compiling, 650 MB of short-lived
// garbage) raised decision p99 and degraded some. Paced, it takes about
// twice as long. The first load, before anything is served, is not paced.
type pacer struct{ since time.Time }

func (p *pacer) pace() {
	if ran := time.Since(p.since); ran >= reloadSlice {
		time.Sleep(ran)
		p.since = time.Now()
	}
}
