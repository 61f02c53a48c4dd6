// Avro single-object records through the Java Avro library, the reference
// SDK: every <in>/<Record>.<n>.avro is decoded with BinaryMessageDecoder
// (which checks the C3 01 header and the fingerprint), printed as
// "<file> TAB <record as JSON>", and encoded again with BinaryMessageEncoder
// into <out>/<same name>: what a Java service publishes.
// Run by tests/it/interop.rs: java SingleObject.java <schemas dir> <in> <out>
import java.io.File;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.util.Arrays;
import org.apache.avro.Schema;
import org.apache.avro.generic.GenericData;
import org.apache.avro.generic.GenericRecord;
import org.apache.avro.message.BinaryMessageDecoder;
import org.apache.avro.message.BinaryMessageEncoder;

public class SingleObject {
  public static void main(String[] args) throws Exception {
    File schemas = new File(args[0]);
    File in = new File(args[1]);
    File out = new File(args[2]);
    File[] files = in.listFiles((d, n) -> n.endsWith(".avro"));
    Arrays.sort(files);
    for (File f : files) {
      String record = f.getName().split("\\.")[0];
      Schema schema = new Schema.Parser().parse(new File(schemas, record + ".avsc"));
      BinaryMessageDecoder<GenericRecord> decoder = new BinaryMessageDecoder<>(GenericData.get(), schema);
      GenericRecord value = decoder.decode(Files.readAllBytes(f.toPath()));
      System.out.println(f.getName() + "\t" + value);
      ByteBuffer encoded = new BinaryMessageEncoder<GenericRecord>(GenericData.get(), schema).encode(value);
      byte[] bytes = new byte[encoded.remaining()];
      encoded.get(bytes);
      Files.write(new File(out, f.getName()).toPath(), bytes);
    }
  }
}
