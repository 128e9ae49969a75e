package agent

import (
	"strings"
	"syscall"
	"testing"
)

func TestRingBuffer(t *testing.T) {
	tests := []struct {
		name      string
		max       int
		writes    []string
		readFrom  int64
		want      string
		wantFrom  int64
		wantStart int64
	}{
		{name: "empty", max: 8, want: "", wantFrom: 0},
		{name: "fits", max: 8, writes: []string{"abc", "de"}, want: "abcde"},
		{name: "exactly full", max: 5, writes: []string{"abc", "de"}, want: "abcde"},
		{name: "wraps", max: 5, writes: []string{"abc", "def", "g"}, want: "cdefg", wantFrom: 2, wantStart: 2},
		{name: "one huge write", max: 4, writes: []string{"0123456789"}, want: "6789", wantFrom: 6, wantStart: 6},
		{name: "huge after small", max: 4, writes: []string{"ab", "0123456789"}, want: "6789", wantFrom: 8, wantStart: 8},
		{name: "read from the middle", max: 8, writes: []string{"abcdef"}, readFrom: 2, want: "cdef", wantFrom: 2},
		{name: "read dropped offset", max: 4, writes: []string{"abcdef"}, readFrom: 1, want: "cdef", wantFrom: 2, wantStart: 2},
		{name: "read wrapped middle", max: 4, writes: []string{"abc", "def"}, readFrom: 3, want: "def", wantFrom: 3, wantStart: 2},
		{name: "read past end", max: 4, writes: []string{"ab"}, readFrom: 9, want: "", wantFrom: 9},
		{name: "many wraps", max: 3, writes: strings.Split("abcdefghijklmnopq", ""), want: "opq", wantFrom: 14, wantStart: 14},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := newRingBuffer(tt.max)
			for _, w := range tt.writes {
				r.write([]byte(w))
			}
			got, from := r.readAt(tt.readFrom, 1<<20)
			if string(got) != tt.want || from != tt.wantFrom {
				t.Errorf("got %q at %d, want %q at %d", got, from, tt.want, tt.wantFrom)
			}
			if r.start() != tt.wantStart {
				t.Errorf("got start %d, want %d", r.start(), tt.wantStart)
			}
			if r.truncated() != (tt.wantStart > 0) {
				t.Errorf("got truncated %v, want %v", r.truncated(), tt.wantStart > 0)
			}
			if len(r.buf) > tt.max {
				t.Errorf("got %d bytes allocated, want at most %d", len(r.buf), tt.max)
			}
		})
	}
}

func TestRingBufferReadLimit(t *testing.T) {
	r := newRingBuffer(4)
	r.write([]byte("abcdef")) // keeps cdef; c at index 2, wraps after d
	var got string
	for off := int64(0); ; {
		b, from := r.readAt(off, 1)
		if len(b) == 0 {
			break
		}
		got += string(b)
		off = from + int64(len(b))
	}
	if got != "cdef" {
		t.Errorf("got %q, want %q", got, "cdef")
	}
}

func TestParseSignal(t *testing.T) {
	tests := []struct {
		in      string
		want    syscall.Signal
		wantErr bool
	}{
		{in: "SIGTERM", want: syscall.SIGTERM},
		{in: "TERM", want: syscall.SIGTERM},
		{in: "term", want: syscall.SIGTERM},
		{in: "15", want: syscall.SIGTERM},
		{in: "sigkill", want: syscall.SIGKILL},
		{in: "HUP", want: syscall.SIGHUP},
		{in: "34", want: syscall.Signal(34)},
		{in: "", wantErr: true},
		{in: "0", wantErr: true},
		{in: "65", wantErr: true},
		{in: "SIGNOPE", wantErr: true},
	}
	for _, tt := range tests {
		got, err := parseSignal(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseSignal(%q) = %v, %v; want %v, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	for name, sig := range signals {
		if got := signalName(sig); got != name {
			t.Errorf("signalName(%d) = %s, want %s", sig, got, name)
		}
	}
}
