package main

import (
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/schollz/progressbar/v3"
	"golang.org/x/term"

	"github.com/nudge-dm/nudge/client"
)

// progressInterval is how often send reports its progress (a variable
// for the tests).
var progressInterval = time.Second

// sendProgress reports the progress of nudgectl send on stderr. Its
// methods may be called from several goroutines.
type sendProgress interface {
	// read counts a line of n bytes read from the input.
	read(n int)
	// update reports the publisher's counters, every progressInterval.
	update(st client.Stats, elapsed time.Duration)
	// printf writes a message (a malformed line) without garbling the
	// progress.
	printf(format string, args ...any)
	// finish ends the progress, before the summary.
	finish(st client.Stats, elapsed time.Duration)
}

// newSendProgress reports on stderr the progress of reading in, named
// name: a bar when stderr is a terminal, with the total and an ETA when
// in is a regular file; a line every progressInterval otherwise; only
// the messages when quiet.
func newSendProgress(stderr io.Writer, in *os.File, name string, quiet bool) sendProgress {
	if quiet || !isTerminal(stderr) {
		return &lineProgress{w: stderr, quiet: quiet}
	}
	total := int64(-1) // a spinner: a pipe has no size
	if fi, err := in.Stat(); err == nil && fi.Mode().IsRegular() {
		total = fi.Size()
		if off, err := in.Seek(0, io.SeekCurrent); err == nil { // stdin redirected from a file may be part read
			total -= off
		}
	}
	if total == 0 {
		total = -1 // progressbar refuses a zero maximum
	}
	return &barProgress{w: stderr, name: name, bar: progressbar.NewOptions64(total,
		progressbar.OptionSetWriter(stderr),
		progressbar.OptionSetDescription(name),
		progressbar.OptionShowBytes(true),
		progressbar.OptionShowCount(),
		progressbar.OptionSetWidth(30),
		progressbar.OptionThrottle(100*time.Millisecond),
		progressbar.OptionSetPredictTime(true),
		progressbar.OptionSpinnerType(14),
		// No goroutine of its own redrawing the spinner: every call
		// goes through barProgress's lock.
		progressbar.OptionSetSpinnerChangeInterval(0),
		progressbar.OptionSetRenderBlankState(true),
	)}
}

// isTerminal reports whether w is a terminal.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// lineProgress prints a line of counters every progressInterval, for
// logs and pipes (and nothing but the messages when quiet).
type lineProgress struct {
	mu    sync.Mutex
	w     io.Writer
	quiet bool
}

func (p *lineProgress) read(int) {}

func (p *lineProgress) update(st client.Stats, elapsed time.Duration) {
	if p.quiet {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, "sent %d  acked %d  applied %d  duplicate %d  rejected %d  %.0f events/s\n",
		st.Published, st.Acked, st.Applied, st.Duplicate, st.Rejected, float64(st.Acked)/elapsed.Seconds())
}

func (p *lineProgress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format, args...)
}

func (p *lineProgress) finish(client.Stats, time.Duration) {}

// barProgress draws a progress bar of the bytes read on a terminal, its
// description counting the events acknowledged.
type barProgress struct {
	mu   sync.Mutex // the bar's own lock does not cover Clear
	w    io.Writer
	name string
	bar  *progressbar.ProgressBar
}

func (p *barProgress) read(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.bar.Add(n) // errors say the file grew past its size: the bar stays full
}

func (p *barProgress) update(st client.Stats, _ time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bar.Describe(p.describe(st))
}

func (p *barProgress) describe(st client.Stats) string {
	s := fmt.Sprintf("%s: %d acked", p.name, st.Acked)
	if st.Rejected > 0 {
		s += fmt.Sprintf(", %d rejected", st.Rejected)
	}
	return s
}

func (p *barProgress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	_ = p.bar.Clear() // the next read draws it again, below the message
	fmt.Fprintf(p.w, format, args...)
}

func (p *barProgress) finish(st client.Stats, _ time.Duration) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.bar.Describe(p.describe(st))
	_ = p.bar.Exit() // left as it is: not full if send stopped early
	fmt.Fprintln(p.w)
}
