package edge

import (
	"net/http"
	"time"

	"nullspace.dev/nullspace/internal/errdefs"
)

// The wake contract for other front doors (the SSH gateway): the same
// decisions and stable codes as the edge's 503 answers, as errors.

// Decide says what to do with a new session for t: forward it (nil, false),
// hold it until a wake or the operation in progress ends (nil, true), or
// refuse it with a contract error. woken says a wake has already been
// waited for.
func Decide(t Target, woken bool) (hold bool, err error) {
	f, v := triage(t, woken)
	switch v {
	case toForward:
		return false, nil
	case toHold:
		return true, nil
	}
	return false, f.err()
}

// WakeError is the contract error for a lineage whose lookup or wake
// failed with err.
func WakeError(lineageID string, err error) error {
	return wakeFailure(lineageID, err).err()
}

// WakeTimeoutError is the contract error for a wake not done within window.
func WakeTimeoutError(lineageID string, window time.Duration) error {
	return wakeTimeout(label{LineageID: lineageID}, window).err()
}

func (f refusal) err() error {
	class := errdefs.ErrUnavailable
	if f.Status == http.StatusNotFound {
		class = errdefs.ErrNotFound
	}
	return errdefs.New(class, f.Code, f.Message, f.Action)
}
