// A Java service next to udo-stream, with Kafka's own client and the Java
// Avro library's single-object encoding (BinaryMessageEncoder /
// BinaryMessageDecoder, what toByteBuffer() and fromByteBuffer() of
// generated classes use):
//   java KafkaClients.java produce <brokers> <topic> <schemas dir> <count> <start ms>
//     publishes latency samples (source "java-service"), prints "sent N";
//   java KafkaClients.java consume <brokers> <topic,topic,...> <schemas dir>
//     reads each topic from the beginning (read_committed) until idle for
//     5 s, prints {"topic":..., "decoded":N}; fails on a record it cannot
//     decode, naming topic, partition and offset.
// Run by tests/it/interop.rs with Kafka's jars and Avro's on the class path.
import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.util.HashMap;
import java.util.Map;
import java.time.Duration;
import java.util.List;
import java.util.Properties;
import java.util.UUID;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.generic.GenericRecordBuilder;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;
import org.apache.kafka.clients.consumer.ConsumerRecord;
import org.apache.kafka.clients.consumer.KafkaConsumer;
import org.apache.kafka.clients.producer.KafkaProducer;
import org.apache.kafka.clients.producer.ProducerRecord;
import org.apache.kafka.common.serialization.ByteArrayDeserializer;
import org.apache.kafka.common.serialization.ByteArraySerializer;
import org.apache.kafka.common.serialization.StringSerializer;

public class KafkaClients {
  static Schema schema(File dir, String name) throws Exception {
    return new Schema.Parser().parse(new File(dir, name + ".avsc"));
  }

  public static void main(String[] args) throws Exception {
    File dir = new File(args[3]);
    if (args[0].equals("produce")) {
      produce(args[1], args[2], dir, Integer.parseInt(args[4]), Long.parseLong(args[5]));
    } else {
      consume(args[1], List.of(args[2].split(",")), dir);
    }
  }

  static void produce(String brokers, String topic, File dir, int count, long startMs) throws Exception {
    Schema s = schema(dir, "LatencySample");
    BinaryMessageEncoder<GenericRecord> encoder = new BinaryMessageEncoder<>(GenericData.get(), s);
    Properties p = new Properties();
    p.put("bootstrap.servers", brokers);
    p.put("enable.idempotence", "true");
    p.put("acks", "all");
    try (KafkaProducer<String, byte[]> producer =
        new KafkaProducer<>(p, new StringSerializer(), new ByteArraySerializer())) {
      for (int i = 0; i < count; i++) {
        GenericRecord r = new GenericRecordBuilder(s)
            .set("event_id", UUID.randomUUID().toString())
            .set("occurred_at", startMs + i * 100L)
            .set("source", "java-service")
            .set("component", "search")
            .set("endpoint", "GET /search")
            .set("latency_ms", 20.0 + (i % 13))
            .set("outcome", new GenericData.EnumSymbol(s.getField("outcome").schema(), "OK"))
            .set("status_code", 200)
            .build();
        ByteBuffer b = encoder.encode(r);
        byte[] bytes = new byte[b.remaining()];
        b.get(bytes);
        producer.send(new ProducerRecord<>(topic, "search", bytes)).get();
      }
    }
    System.out.println("sent " + count);
  }

  static void consume(String brokers, List<String> topics, File dir) throws Exception {
    // One decoder per schema, picked by the record's fingerprint: a
    // decoder resolves whatever it reads to its own (reader) schema.
    Map<Long, BinaryMessageDecoder<GenericRecord>> decoders = new HashMap<>();
    for (File f : dir.listFiles((d, n) -> n.endsWith(".avsc"))) {
      Schema s = new Schema.Parser().parse(f);
      decoders.put(SchemaNormalization.parsingFingerprint64(s), new BinaryMessageDecoder<>(GenericData.get(), s));
    }
    for (String topic : topics) {
      Properties p = new Properties();
      p.put("bootstrap.servers", brokers);
      p.put("group.id", "java-reader-" + UUID.randomUUID());
      p.put("auto.offset.reset", "earliest");
      p.put("isolation.level", "read_committed");
      p.put("enable.auto.commit", "false");
      int count = 0;
      try (KafkaConsumer<byte[], byte[]> c =
          new KafkaConsumer<>(p, new ByteArrayDeserializer(), new ByteArrayDeserializer())) {
        c.subscribe(List.of(topic));
        int idle = 0;
        while (idle < 10) {
          var records = c.poll(Duration.ofMillis(500));
          if (records.isEmpty()) {
            idle++;
            continue;
          }
          idle = 0;
          for (ConsumerRecord<byte[], byte[]> r : records) {
            GenericRecord v;
            try {
              long fp = ByteBuffer.wrap(r.value(), 2, 8).order(ByteOrder.LITTLE_ENDIAN).getLong();
              BinaryMessageDecoder<GenericRecord> decoder = decoders.get(fp);
              if (decoder == null) {
                throw new IllegalStateException("fingerprint " + Long.toHexString(fp) + " matches no schema");
              }
              v = decoder.decode(r.value());
            } catch (Exception e) {
              System.err.println(topic + "[" + r.partition() + "]@" + r.offset() + ": cannot decode: " + e);
              System.exit(1);
              return;
            }
            if (v.get("event_id") == null) {
              System.err.println(topic + "@" + r.offset() + ": no event_id");
              System.exit(1);
            }
            count++;
          }
        }
      }
      System.out.println("{\"topic\":\"" + topic + "\",\"decoded\":" + count + "}");
    }
  }
}
