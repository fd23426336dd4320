package limiter

import (
	"bytes"
	"io"
	"net/http"
	"reflect"
	"sync"
)

// The request bodies of a Transport that may retry.
//
// The first attempt sends req.Body; a retry sends what req.GetBody
// returns, and nothing else. Some clients' GetBody hands out the same
// seekable body each time, rewound (azcore does): the body the Transport
// received is then the one the caller's next GetBody will return, and a
// Close by Base would break that call ("file already closed"). So a body
// that may be replayed goes to Base inside a sharedBody, whose Close Base
// may call as it likes; the Transport closes the body itself once Base has
// finished with it and the request is over, unless GetBody handed that
// very body out again, in which case the body is the caller's and nobody
// here closes it.

// sharedBody is a request body lent to Base. Its Close reports that Base
// is done with it; the underlying body is closed when both Base is done
// and the Transport has released it, and never when kept.
type sharedBody struct {
	io.ReadCloser

	mu       sync.Mutex
	baseDone bool // Base closed it
	released bool // the Transport no longer needs it
	kept     bool // GetBody returned it again: never close it
	closed   bool
}

func newSharedBody(rc io.ReadCloser) *sharedBody { return &sharedBody{ReadCloser: rc} }

// Close is called by Base, possibly from another goroutine and after
// RoundTrip has returned.
func (b *sharedBody) Close() error {
	b.mu.Lock()
	b.baseDone = true
	return b.closeIfDoneLocked()
}

// release tells b that the Transport is done with it.
func (b *sharedBody) release() error {
	b.mu.Lock()
	b.released = true
	return b.closeIfDoneLocked()
}

// keep marks b as the caller's: it is never closed here.
func (b *sharedBody) keep() {
	b.mu.Lock()
	b.kept = true
	b.mu.Unlock()
}

// closeIfDoneLocked closes the underlying body once nobody here needs it,
// and unlocks b.mu before it does.
func (b *sharedBody) closeIfDoneLocked() error {
	do := b.baseDone && b.released && !b.kept && !b.closed
	if do {
		b.closed = true
	}
	b.mu.Unlock()
	if do {
		return b.ReadCloser.Close()
	}
	return nil
}

// noClose is a replayed body that is also the caller's (GetBody returned
// the body it was given): Base reads it, and its Close does nothing.
type noClose struct{ io.Reader }

func (noClose) Close() error { return nil }

// sameBody reports whether a and b are the same body. Bodies of types that
// cannot be compared are never the same.
func sameBody(a, b io.ReadCloser) bool {
	if a == nil || b == nil {
		return false
	}
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	return ta == tb && ta.Comparable() && a == b
}

// bodyReplayable reports whether req's body can be sent again: there is
// none, or GetBody can make it.
func bodyReplayable(req *http.Request) bool {
	return req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
}

// bufferBody reads a bounded part of a response body that may not be
// returned, so that its connection can be reused, and closes it. When the
// whole body fit, resp gets it back in memory, and bufferBody reports true.
func bufferBody(resp *http.Response) bool {
	if resp.Body == nil {
		return true
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, drainLimit+1))
	resp.Body.Close()
	if err != nil || len(b) > drainLimit {
		return false
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	return true
}

// peekBody reads up to drainLimit bytes of resp.Body and puts them back in
// front of the rest, so that a hook can read the start of the body
// without taking it from the caller. It returns what it read.
func peekBody(resp *http.Response) []byte {
	if resp.Body == nil || resp.Body == http.NoBody {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, drainLimit))
	rest := resp.Body
	if err != nil {
		rest = errBody{rest, err} // the caller sees the error where it was
	}
	resp.Body = prefixBody{io.MultiReader(bytes.NewReader(b), rest), rest}
	return b
}

// prefixBody reads a buffered prefix, then the rest of the body; Close
// closes the original body.
type prefixBody struct {
	io.Reader
	c io.Closer
}

func (p prefixBody) Close() error { return p.c.Close() }

// errBody returns err from Read, and closes the original body.
type errBody struct {
	io.ReadCloser
	err error
}

func (e errBody) Read([]byte) (int, error) { return 0, e.err }
