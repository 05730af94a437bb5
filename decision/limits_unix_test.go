//go:build unix

package decision

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// TestLoadFromAFIFOStopsAtTheLimit: a named pipe whose writer never stops
// is read up to the limit, then refused; the writer sees the pipe closed.
func TestLoadFromAFIFOStopsAtTheLimit(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rules.fifo")
	if err := syscall.Mkfifo(path, 0o600); err != nil {
		t.Fatalf("mkfifo: %v", err) // every unix this test builds on has named pipes
	}
	done := make(chan error, 1)
	go func() {
		w, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			done <- err
			return
		}
		defer w.Close()
		chunk := []byte(strings.Repeat("# an endless comment\n", 100))
		for {
			if _, err := w.Write(chunk); err != nil {
				done <- nil // the reader closed the pipe
				return
			}
		}
	}()
	_, err := Load(path, WithLimits(Limits{MaxBytes: 64 << 10}))
	if !errors.Is(err, ErrInvalidRules) || !strings.Contains(err.Error(),
		"the file is larger than the limit of 65536 bytes (max_bytes): reading stopped after 65537 bytes") {
		t.Errorf("Load(fifo): %v", err)
	}
	if err := <-done; err != nil {
		t.Errorf("writer: %v", err)
	}
}
