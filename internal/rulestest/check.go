package rulestest

import "fmt"

// OtherUserError is an event of the Input that is not the user's.
type OtherUserError struct {
	// Index is the event's index in Input.History, or -1 for
	// Input.Event.
	Index int
	// UserID is the event's user; Want the user played.
	UserID, Want string
}

func (e *OtherUserError) Error() string {
	return fmt.Sprintf("rulestest: %s is for user %q, not %q", e.Field(), e.UserID, e.Want)
}

// Field names the event as the Input's field: "event" or "history[i]".
func (e *OtherUserError) Field() string {
	if e.Index < 0 {
		return "event"
	}
	return fmt.Sprintf("history[%d]", e.Index)
}

// user is the user in plays: UserID, else the Event's, else the first
// History event's ("" when none names one).
func (in *Input) user() string {
	switch {
	case in.UserID != "":
		return in.UserID
	case in.Event != nil:
		return in.Event.UserID
	case len(in.History) > 0:
		return in.History[0].UserID
	}
	return ""
}

// Check reports the first event of in that is not the user's (an
// *OtherUserError), history first; Run refuses such an input, and a
// caller that reads the user's profile can check before it does.
func (in *Input) Check() error {
	user := in.user()
	for i := range in.History {
		if u := in.History[i].UserID; u != user {
			return &OtherUserError{Index: i, UserID: u, Want: user}
		}
	}
	if in.Event != nil && in.Event.UserID != user {
		return &OtherUserError{Index: -1, UserID: in.Event.UserID, Want: user}
	}
	return nil
}
