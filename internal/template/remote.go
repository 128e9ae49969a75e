package template

import (
	"archive/tar"
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"nullspace.dev/nullspace/api"
	"nullspace.dev/nullspace/internal/errdefs"
	"nullspace.dev/nullspace/internal/objstore"
)

// In the object store (Options.Remote), a template is the canonical tar of
// its root filesystem (scanTree), one file named rootfs.tar, stored by
// internal/objstore/chunks under templates/<hex digest>/manifest.json, with
// {"digest", "template"} as the manifest's meta. The key holds the digest
// and not the name: the same files built on two hosts are one object, and
// a template rebuilt under its name is another.
//
// Uploads run in the background, one at a time: a build does not wait for
// its upload. Open queues every ready template not yet uploaded; a failed
// upload goes to the back of the queue and the uploader waits
// UploadBackoff, doubling up to maxUploadBackoff, before the next one.
// template.json records uploaded: true once the manifest is in the store;
// the flag does not say which store, so pointing a data dir at another
// bucket does not upload its templates again.
//
// A fetch (RootfsByDigest) downloads the tar into .trash-fetch-*/, extracts
// it through the tarball filter (device nodes allowed), checks that the
// result has the wanted digest and renames it to .by-digest/<hex>/. The
// digest's lock in .locks serializes fetches of one digest across
// goroutines and processes.

// ManifestPrefix is where templates are in the object store, for a sweep.
const ManifestPrefix = "templates/"

// ManifestKey is the key of the manifest of the template whose digest is d.
func ManifestKey(d string) string { return ManifestPrefix + digestHex(d) + "/manifest.json" }

const (
	defaultUploadBackoff = 5 * time.Second
	maxUploadBackoff     = 5 * time.Minute
	byDigestDir          = ".by-digest"
	tarName              = "rootfs.tar"
)

// uploadQueue holds the names of templates to upload, in order, each once.
type uploadQueue struct {
	enabled bool
	kick    chan struct{} // has a value when names were added

	mu     sync.Mutex
	names  []string
	queued map[string]bool
}

func (q *uploadQueue) init(enabled bool) {
	q.enabled, q.kick, q.queued = enabled, make(chan struct{}, 1), map[string]bool{}
}

// add queues name at the back, unless it is queued already or there is no
// remote.
func (q *uploadQueue) add(name string) {
	if !q.enabled {
		return
	}
	q.mu.Lock()
	if !q.queued[name] {
		q.queued[name] = true
		q.names = append(q.names, name)
	}
	q.mu.Unlock()
	select {
	case q.kick <- struct{}{}:
	default:
	}
}

// next takes the name at the front. A name added again while its upload
// runs (it was rebuilt meanwhile) is queued again.
func (q *uploadQueue) next() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.names) == 0 {
		return "", false
	}
	name := q.names[0]
	q.names = q.names[1:]
	delete(q.queued, name)
	return name, true
}

// background is what Open starts: the digests of templates made by an
// older binary, and with a remote, the uploads, until ctx ends.
func (s *Store) background(ctx context.Context) {
	metas, err := s.readyMetas(ctx)
	if err != nil {
		s.log.Warn("listing templates to digest and upload", "err", err)
	}
	for _, m := range metas {
		switch {
		case s.uploads.enabled:
			// Whatever the uploaded flag says: it does not say to which
			// store, and a templates dir may serve servers of several.
			// The upload asks the store first, which is cheap.
			s.uploads.add(m.Name) // the upload computes the digest first
		case m.Digest == "":
			if _, err := s.Digest(ctx, m.Name); err != nil && ctx.Err() == nil {
				s.log.Warn("computing the digest of a template made by an older version", "template", m.Name, "err", err)
			}
		}
	}
	if !s.uploads.enabled {
		return
	}
	wait := s.opts.UploadBackoff
	for {
		name, ok := s.uploads.next()
		if !ok {
			select {
			case <-ctx.Done():
				return
			case <-s.uploads.kick:
			}
			continue
		}
		err := s.upload(ctx, name)
		if err == nil {
			wait = s.opts.UploadBackoff
			continue
		}
		if ctx.Err() != nil {
			return
		}
		s.uploads.add(name)
		s.log.Warn("template upload failed; retrying", "template", name, "retry_in", wait, "err", err)
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, maxUploadBackoff)
	}
}

// Upload puts template name, whose digest must be digest, in the object
// store now, unless it is there: a snapshot taken on it is durable only
// then, and should not wait behind the background queue (a big template
// ahead of it).
func (s *Store) Upload(ctx context.Context, name, digest string) error {
	if s.opts.Remote == nil {
		return errors.New("upload template: no object store")
	}
	d, err := s.Digest(ctx, name)
	if err != nil {
		return err
	}
	if d != digest {
		return fmt.Errorf("upload template %s: it was rebuilt (%s), and its tree %s is gone", name, d, digest)
	}
	return s.upload(ctx, name)
}

// upload puts the template name in the object store unless it is there;
// a template deleted meanwhile is done with.
func (s *Store) upload(ctx context.Context, name string) error {
	d, err := s.Digest(ctx, name)
	if errors.Is(err, errdefs.ErrNotFound) || errdefs.Classify(err).Code == errdefs.CodeTemplateNotReady {
		return nil // deleted, or rebuilt and failed: nothing to upload
	}
	if err != nil {
		return err
	}
	m, err := s.readMeta(filepath.Join(s.dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if m.Digest != d {
		return errReplaced // try again with the new one
	}
	id, err := s.identity(name, m)
	if err != nil {
		return err
	}
	log := s.log.With("template", name, "digest", d)
	key := ManifestKey(d)
	_, err = s.opts.Remote.Remote.Stat(ctx, key)
	switch {
	case err == nil:
		log.Info("template already in the object store")
	case errors.Is(err, objstore.ErrNotFound):
		if err := s.uploadTar(ctx, m, key); err != nil {
			return err
		}
	default:
		return err
	}
	err = s.updateMeta(name, id, func(m *meta) {
		if m.Digest == d {
			m.Uploaded = true
		}
	})
	if errors.Is(err, errReplaced) {
		return nil // the new template is queued by its own build
	}
	return err
}

// uploadTar writes m's root filesystem as its canonical tar into a
// temporary directory of the store and uploads it at key.
func (s *Store) uploadTar(ctx context.Context, m meta, key string) error {
	start := time.Now()
	tmp, err := os.MkdirTemp(s.dir, trashPrefix+"upload-")
	if err != nil {
		return err
	}
	defer func() {
		if err := removeTree(tmp); err != nil {
			s.log.Warn("removing an upload's tar", "err", err)
		}
	}()
	f, err := os.OpenFile(filepath.Join(tmp, tarName), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	bw := bufio.NewWriterSize(f, 1<<20)
	sc, err := scanTree(ctx, filepath.Join(s.dir, m.Name, rootfsName), tar.NewWriter(bw))
	if err == nil {
		err = bw.Flush()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write the tar of template %s: %w", m.Name, err)
	}
	if sc.digest != m.Digest {
		// Deleted and rebuilt under the walk, or changed in place (which
		// nothing may do): never store files under another digest.
		return fmt.Errorf("template %s: its root filesystem has digest %s, not %s as recorded", m.Name, sc.digest, m.Digest)
	}
	tarred := time.Since(start)
	info, err := json.Marshal(struct {
		Digest   string       `json:"digest"`
		Template api.Template `json:"template"`
	}{m.Digest, m.Template})
	if err != nil {
		return err
	}
	_, st, err := s.opts.Remote.Upload(ctx, key, tmp, []string{tarName}, info)
	if err != nil {
		return fmt.Errorf("upload template %s: %w", m.Name, err)
	}
	s.log.Info("template uploaded", "template", m.Name, "digest", m.Digest, "tar_duration", tarred.Round(time.Millisecond),
		"duration", time.Since(start).Round(time.Millisecond), "bytes", st.BytesRead,
		"chunks", st.Chunks, "chunks_uploaded", st.ChunksUploaded, "bytes_uploaded", st.BytesUploaded)
	return nil
}

// RootfsByDigest returns a root filesystem directory whose digest is
// digest, to be used read-only, for a snapshot taken on the template name:
// the template name itself if it has that digest (its digest is computed
// now if it was made by an older binary); else a copy fetched earlier, or
// another template with that digest; else, with Options.Remote, the copy
// in the object store, fetched now (once per digest across goroutines and
// processes sharing the directory).
//
// Errors: invalid_argument for a malformed digest; snapshot_incompatible
// (failed precondition) when neither this server nor the object store has
// it; snapshot_corrupt when the object store's copy is damaged or does not
// have the digest; object_store_unavailable (retryable) when the store
// does not answer.
func (s *Store) RootfsByDigest(ctx context.Context, name, digest string) (string, error) {
	if err := ValidateDigest(digest); err != nil {
		return "", fmt.Errorf("template rootfs by digest: %w", err)
	}
	if ValidateName(name) == nil {
		d, err := s.Digest(ctx, name)
		if err != nil && ctx.Err() != nil {
			return "", fmt.Errorf("template rootfs %s: %w", name, err)
		}
		if err == nil && d == digest {
			return filepath.Join(s.dir, name, rootfsName), nil
		}
	}
	if dir, ok := s.kept(digest); ok {
		return dir, nil
	}
	metas, err := s.readyMetas(ctx)
	if err != nil {
		return "", fmt.Errorf("template rootfs by digest: %w", err)
	}
	for _, m := range metas {
		if m.Digest == digest {
			return filepath.Join(s.dir, m.Name, rootfsName), nil
		}
	}
	if s.opts.Remote == nil {
		return "", errMissing(name, digest, "this server has no object store to fetch it from")
	}
	dir, err := s.fetch(ctx, name, digest)
	if err != nil {
		return "", fmt.Errorf("template rootfs %s by digest %s: %w", name, digest, err)
	}
	return dir, nil
}

// kept returns the fetched copy of digest, if there is one.
func (s *Store) kept(digest string) (string, bool) {
	dir := filepath.Join(s.dir, byDigestDir, digestHex(digest), rootfsName)
	fi, err := os.Lstat(dir)
	return dir, err == nil && fi.IsDir()
}

// fetch downloads, extracts and checks the object store's copy of digest
// into .by-digest.
func (s *Store) fetch(ctx context.Context, name, digest string) (string, error) {
	hex := digestHex(digest)
	log := s.log.With("template", name, "digest", digest)
	lock, err := lockWait(ctx, filepath.Join(s.dir, locksDir, "digest-"+hex+".lock"), func() {
		log.Info("waiting for another fetch of the template")
	})
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if dir, ok := s.kept(digest); ok {
		return dir, nil // fetched while we waited
	}

	start := time.Now()
	key := ManifestKey(digest)
	man, err := s.opts.Remote.ReadManifest(ctx, key)
	if errors.Is(err, objstore.ErrNotFound) {
		return "", errMissing(name, digest, "the object store has no copy of it either (the server that built it may not have uploaded it yet)")
	}
	if err != nil {
		return "", err
	}
	if len(man.Files) != 1 || man.Files[0].Name != tarName {
		return "", errCorrupt(name, digest, fmt.Errorf("manifest %s does not hold %s alone", key, tarName))
	}
	tmp, err := os.MkdirTemp(s.dir, trashPrefix+"fetch-")
	if err != nil {
		return "", err
	}
	defer func() {
		if err := removeTree(tmp); err != nil {
			log.Warn("removing a template fetch", "err", err)
		}
	}()
	dl := filepath.Join(tmp, "download")
	if err := s.opts.Remote.Download(ctx, man, dl); err != nil {
		return "", err
	}
	rootfs := filepath.Join(tmp, rootfsName)
	if err := os.Mkdir(rootfs, 0o755); err != nil {
		return "", err
	}
	f, err := os.Open(filepath.Join(dl, tarName))
	if err != nil {
		return "", err
	}
	err = extract(ctx, f, rootfs, 0, true)
	f.Close()
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", errCorrupt(name, digest, fmt.Errorf("extract: %w", err))
	}
	if err := removeTree(dl); err != nil {
		return "", err
	}
	sc, err := scanTree(ctx, rootfs, nil)
	if err != nil {
		return "", err
	}
	if sc.digest != digest {
		return "", errCorrupt(name, digest, fmt.Errorf("the fetched root filesystem has digest %s", sc.digest))
	}
	if err := os.MkdirAll(filepath.Join(s.dir, byDigestDir), dirPerm); err != nil {
		return "", err
	}
	final := filepath.Join(s.dir, byDigestDir, hex)
	if err := os.Rename(tmp, final); err != nil {
		return "", err
	}
	if err := syncDir(filepath.Dir(final)); err != nil {
		return "", err
	}
	log.Info("template fetched from the object store", "duration", time.Since(start).Round(time.Millisecond),
		"size_bytes", sc.size)
	return filepath.Join(final, rootfsName), nil
}

// Digests returns, sorted and once each, the digests of this store's ready
// templates and of its fetched copies: what an object-store sweep must keep
// on this server's behalf. A template made by an older binary whose digest
// is not computed yet is missing; it is not uploaded either.
func (s *Store) Digests(ctx context.Context) ([]string, error) {
	metas, err := s.readyMetas(ctx)
	if err != nil {
		return nil, fmt.Errorf("template digests: %w", err)
	}
	var out []string
	for _, m := range metas {
		if m.Digest != "" {
			out = append(out, m.Digest)
		}
	}
	entries, err := os.ReadDir(filepath.Join(s.dir, byDigestDir))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("template digests: %w", err)
	}
	for _, e := range entries {
		if d := digestPrefix + e.Name(); ValidateDigest(d) == nil {
			out = append(out, d)
		}
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// readyMetas returns the metadata of every ready template.
func (s *Store) readyMetas(ctx context.Context) ([]meta, error) {
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		return nil, err
	}
	var out []meta
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !e.IsDir() || ValidateName(e.Name()) != nil {
			continue
		}
		m, err := s.readMeta(filepath.Join(s.dir, e.Name()))
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted meanwhile
		}
		if err != nil {
			return nil, err
		}
		if m.State == api.TemplateReady {
			m.Name = e.Name()
			out = append(out, m)
		}
	}
	return out, nil
}

func errMissing(name, digest, why string) error {
	return errdefs.New(errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotIncompatible,
		fmt.Sprintf("the template this snapshot was taken on (%s, digest %s) is not on this server, and %s", name, digest, why),
		"resume the snapshot on the server that took it, or give both servers the same --object-store so that templates are shared")
}

func errCorrupt(name, digest string, cause error) error {
	return errdefs.Wrap(cause, errdefs.ErrFailedPrecondition, errdefs.CodeSnapshotCorrupt,
		fmt.Sprintf("the object store's copy of template %s (digest %s) is corrupt", strings.TrimSpace(name), digest),
		"resume the snapshot on the server that took it, and report the damaged object to the operator")
}
