package client

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"iter"

	"nullspace.dev/nullspace/api"
)

// EventStream reads the NDJSON stream of api.CommandEvent returned by
// StreamCommand and StreamOutput. It is not safe for concurrent use. Close it
// when done; ranging over All to the end closes it too.
type EventStream struct {
	body io.ReadCloser
	dec  *json.Decoder
	err  error // sticky: returned by every Next after the first failure
}

func newEventStream(body io.ReadCloser) *EventStream {
	return &EventStream{body: body, dec: json.NewDecoder(body)}
}

// Next returns the next event. It returns io.EOF when the server ended the
// stream cleanly, and io.ErrUnexpectedEOF (wrapped) when the stream was cut
// inside an event. An event of type "error" is returned together with its
// error as an *APIError (Status 0); the stream yields nothing after it.
func (s *EventStream) Next() (api.CommandEvent, error) {
	if s.err != nil {
		return api.CommandEvent{}, s.err
	}
	var ev api.CommandEvent
	if err := s.dec.Decode(&ev); err != nil {
		if !errors.Is(err, io.EOF) {
			err = fmt.Errorf("read command event stream: %w", err)
		}
		s.err = err
		return api.CommandEvent{}, err
	}
	if ev.Type == api.EventError {
		w := ev.Error
		if w == nil {
			w = &api.Error{Code: "internal", Message: "stream error without details"}
		}
		s.err = fromWire(0, w)
		return ev, s.err
	}
	return ev, nil
}

// All returns an iterator over the remaining events. It stops after the
// first error (yielded once, io.EOF excluded) and closes the stream when it
// returns.
func (s *EventStream) All() iter.Seq2[api.CommandEvent, error] {
	return func(yield func(api.CommandEvent, error) bool) {
		defer s.Close()
		for {
			ev, err := s.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if !yield(ev, err) || err != nil {
				return
			}
		}
	}
}

// Close ends the stream and releases the connection.
func (s *EventStream) Close() error {
	return s.body.Close()
}
