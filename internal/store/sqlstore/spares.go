package sqlstore

import (
	"context"
	"database/sql"
	"fmt"

	"nullspace.dev/nullspace/internal/store"
)

// CreateSpare stores a spare and gives it, in the same transaction, the
// lowest free network slot (as CreateMachine does).
func (s *DB) CreateSpare(ctx context.Context, sp *store.Spare, slots int) error {
	return s.withFreeSlot(ctx, "create spare "+sp.MachineID, slots, func(tx *sql.Tx, slot int) error {
		if _, err := tx.ExecContext(ctx, `INSERT INTO spares (machine_id, container_id, slot, shape, created_at) VALUES (?,?,?,?,?)`,
			sp.MachineID, sp.ContainerID, slot, sp.Shape, formatTime(sp.CreatedAt)); err != nil {
			return fmt.Errorf("insert spare %s: %w", sp.MachineID, err)
		}
		sp.Slot = slot
		return nil
	})
}

// DeleteSpare removes a spare's row; deleting a missing spare is not an error.
func (s *DB) DeleteSpare(ctx context.Context, machineID string) error {
	if _, err := s.db.ExecContext(ctx, `DELETE FROM spares WHERE machine_id = ?`, machineID); err != nil {
		return fmt.Errorf("delete spare %s: %w", machineID, err)
	}
	return nil
}

// ListSpares returns every spare, oldest first.
func (s *DB) ListSpares(ctx context.Context) ([]*store.Spare, error) {
	return queryAll(ctx, s.db, "list spares", `SELECT machine_id, container_id, slot, shape, created_at FROM spares ORDER BY created_at, machine_id`, nil,
		func(r scanner) (*store.Spare, error) {
			var sp store.Spare
			var created string
			if err := r.Scan(&sp.MachineID, &sp.ContainerID, &sp.Slot, &sp.Shape, &created); err != nil {
				return nil, err
			}
			sp.CreatedAt = parseTime(created)
			return &sp, nil
		})
}

// CommittedMemoryMB is the memory, in MiB, given to the machines that hold
// a network slot (they have, or are about to have, a sandbox) and to the
// spares.
func (s *DB) CommittedMemoryMB(ctx context.Context) (int64, error) {
	var n int64
	err := s.db.QueryRowContext(ctx, `SELECT
		coalesce((SELECT sum(memory_mb) FROM machines WHERE slot >= 0), 0) +
		coalesce((SELECT sum(json_extract(shape, '$.memory_mb')) FROM spares), 0)`).Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("committed memory: %w", err)
	}
	return n, nil
}
