package errdefs

import (
	"errors"
	"fmt"
	"testing"
)

// TestClassifySendsOnlyPublicMessages: a body's message is an *Error's
// own, or its class's fixed one; the text of any other error stays out.
func TestClassifySendsOnlyPublicMessages(t *testing.T) {
	const secret = "open /var/lib/nullspace/machines/x: permission denied"
	coded := New(ErrNotFound, CodeMachineNotFound, "machine x not found", "list machines")
	for _, tc := range []struct {
		name    string
		err     error
		code    string
		message string
		hidden  bool
	}{
		{"an *Error", coded, CodeMachineNotFound, "machine x not found", false},
		{"a wrapped *Error", fmt.Errorf("get x: %w", coded), CodeMachineNotFound, "machine x not found", false},
		{"an *Error with a cause", Wrap(errors.New(secret), ErrUnavailable, CodeAgentUnavailable, "the agent is not reachable", ""),
			CodeAgentUnavailable, "the agent is not reachable", false},
		{"a class with text", fmt.Errorf("%s: %w", secret, ErrConflict), CodeConflict, "conflict", true},
		{"a class with text, wrapped", fmt.Errorf("pause x: %w", fmt.Errorf("%s: %w", secret, ErrInvalidArgument)),
			CodeInvalidArgument, "invalid argument", true},
		{"a bare class", ErrUnauthenticated, CodeUnauthenticated, "missing or invalid API key", false},
		{"no class", errors.New(secret), CodeInternal, "internal error", true},
		{"a transition", &InvalidTransitionError{ID: "x", From: "paused", To: "paused"}, CodeInvalidTransition,
			"machine x cannot go from paused to paused", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := Classify(tc.err)
			if p.Code != tc.code || p.Message != tc.message || p.Hidden != tc.hidden {
				t.Errorf("Classify = code %q message %q hidden %v, want %q %q %v", p.Code, p.Message, p.Hidden, tc.code, tc.message, tc.hidden)
			}
		})
	}
}
