-- Every offset stored for group $1 (a finished replay's).
DELETE FROM consumer_offsets WHERE consumer_group = $1
