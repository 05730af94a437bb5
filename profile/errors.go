package profile

import (
	"errors"
	"fmt"
	"time"
)

// Errors of the profile store, whatever keeps the profiles (see
// profile/redisstore). Callers match them with errors.Is; server maps them
// to gRPC codes in one place.
var (
	// ErrNotFound means the user has no profile.
	ErrNotFound = errors.New("profile: not found")
	// ErrConflict means a user's transaction kept conflicting with other
	// writers until the attempts ran out. Nothing of that user's events was
	// applied; re-sending them is safe.
	ErrConflict = errors.New("profile: transaction conflicts exhausted the retries")
	// ErrUnavailable means the store could not be reached, or a write was
	// not confirmed by enough replicas (*ReplicationError). The events may
	// or may not have been applied; re-sending them is safe
	// (deduplication). It is a failure of the store, not of one user.
	ErrUnavailable = errors.New("profile: store unavailable")
	// ErrCorrupt means what is stored under a user's key is not a profile
	// this version can read: an encoding it cannot decode, or a value of
	// another type. It concerns that user alone, and re-sending does not
	// help.
	ErrCorrupt = errors.New("profile: corrupt encoding")
)

// ReplicationError is a write that the store committed on the master but
// that fewer replicas than asked acknowledged in time: it would be lost if
// the master failed now and a replica without it were promoted. The caller
// gets it, matching ErrUnavailable, instead of an acknowledgement, and
// re-sends: a re-send that finds the events applied reports them as
// duplicates only once the profile holding them is replicated.
type ReplicationError struct {
	// Acked is how many replicas acknowledged the write; Want how many
	// were asked for.
	Acked, Want int
	// Timeout is how long the store waited.
	Timeout time.Duration
}

func (e *ReplicationError) Error() string {
	return fmt.Sprintf("%v: written on the master but acknowledged by %d of %d replicas within %v", ErrUnavailable, e.Acked, e.Want, e.Timeout)
}

// Unwrap makes a ReplicationError match ErrUnavailable.
func (e *ReplicationError) Unwrap() error { return ErrUnavailable }

// PanicError is a panic of a Step on a user's events, recovered by the
// store. Nothing of that user was written.
type PanicError struct {
	Value any
	// Stack is the panicking goroutine's stack, for the log; Error leaves
	// it out so that it never reaches a client.
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("profile: step panicked: %v", e.Value) }
