-- Every subject of group $1's tasks $2.
SELECT task, subject, entry FROM analyze_state WHERE consumer_group = $1 AND task = ANY($2)
