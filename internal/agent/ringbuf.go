package agent

// ringBuffer keeps the last max bytes written to it and addresses them by
// absolute offset: the n-th byte ever written has offset n-1, whether or not
// it is still kept. Readers that fell behind see where the kept data starts
// and resume from there.
//
// The byte at offset o lives at buf[o%max]. The slice grows on demand up to
// max so that the many commands that print little cost little memory.
//
// ringBuffer is not safe for concurrent use; output guards it.
type ringBuffer struct {
	max int
	buf []byte
	end int64 // offset of the next byte to be written
}

func newRingBuffer(max int) ringBuffer { return ringBuffer{max: max} }

// start is the offset of the oldest byte still kept.
func (r *ringBuffer) start() int64 { return max(0, r.end-int64(r.max)) }

// truncated reports whether bytes were ever dropped from the front.
func (r *ringBuffer) truncated() bool { return r.start() > 0 }

func (r *ringBuffer) write(p []byte) {
	if r.max <= 0 {
		r.end += int64(len(p))
		return
	}
	if len(p) > r.max {
		r.end += int64(len(p) - r.max)
		p = p[len(p)-r.max:]
	}
	if need := int(min(r.end+int64(len(p)), int64(r.max))); need > len(r.buf) {
		r.grow(need)
	}
	for len(p) > 0 {
		i := int(r.end % int64(r.max))
		n := copy(r.buf[i:], p)
		p = p[n:]
		r.end += int64(n)
	}
}

// grow makes len(r.buf) at least need, keeping offsets in place. It is only
// called before the buffer first wraps, when buf[o] holds offset o.
func (r *ringBuffer) grow(need int) {
	if need <= cap(r.buf) {
		r.buf = r.buf[:need]
		return
	}
	c := min(max(need, 2*cap(r.buf), 4096), r.max)
	buf := make([]byte, need, c)
	copy(buf, r.buf)
	r.buf = buf
}

// readAt copies up to limit bytes starting at offset off, or at the oldest
// kept byte if off was already dropped. It returns the bytes and the offset
// of the first one; no bytes when nothing at or after off is kept yet.
func (r *ringBuffer) readAt(off int64, limit int) ([]byte, int64) {
	from := max(off, r.start())
	if from >= r.end || limit <= 0 {
		return nil, from
	}
	n := int(min(r.end-from, int64(limit)))
	out := make([]byte, n)
	for done := 0; done < n; {
		i := int((from + int64(done)) % int64(r.max))
		done += copy(out[done:], r.buf[i:min(len(r.buf), i+n-done)])
	}
	return out, from
}

// bytes returns everything still kept.
func (r *ringBuffer) bytes() []byte {
	b, _ := r.readAt(0, r.max)
	return b
}
