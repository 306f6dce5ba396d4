-- Removes the triggers `invalidate_on` installed for one (table, tag template); see row_invalidation.sql.
-- Placeholders: __TABLE__, __TRIGGER__ (as there). The shared function stays (other tables may use it).
DROP TRIGGER IF EXISTS "__TRIGGER___ins" ON __TABLE__;
DROP TRIGGER IF EXISTS "__TRIGGER___upd" ON __TABLE__;
DROP TRIGGER IF EXISTS "__TRIGGER___del" ON __TABLE__;
DROP TRIGGER IF EXISTS "__TRIGGER___trn" ON __TABLE__;
